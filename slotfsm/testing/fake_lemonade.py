"""``FakeLemonade``: an ASGI app that behaves like Lemonade Server 11.7.0's model API.

It reproduces what the real server was recorded doing
(``../shared/reference/lemonade-api.md`` and ``lemonade-transcripts.json``;
``tests/test_contract.py`` replays every recorded scenario against it):
the four route prefixes and ``/live``; 401 without the API key; 405 for a GET
on a POST route; public model ids with their ``extra.``/``user.`` spellings
(accepted by ``/load``, ``/unload`` and ``/api/v1/models/{name}``, echoed as
sent, listed bare); ``/load`` serialized server-wide, with ``null`` options
meaning "not given", a string ``ctx_size`` ignored, a non-string
``llamacpp_args`` refused before anything is touched, per-type LRU, the
same-options refresh, and the evict-all with its one retry after any start
failure, an unknown ``llamacpp_backend`` and reserved ``llamacpp_args``
included; ``/unload`` that unloads everything when it gets no usable name;
``/health`` with every 11.7.0 field and ``last_use`` in milliseconds on a
monotonic clock; ``GET /api/v1/models``, ``/api/v1/models/{name}``,
``/api/v1/system-info`` and a token ``/chat/completions``.  The clock is
``anyio.current_time()``, so under trio's ``MockClock`` it is virtual time.

**Timing.** ``timing`` (a :class:`FakeTiming`) says how long a start, an
unload or eviction, and a start that never becomes ready take, and whether
``/health`` waits for evictions in progress.  The default,
``FakeTiming.INSTANT``, makes everything instant, in process and on
loopback, so that tests and ``slotfsm demo`` stay fast.
``FakeTiming.REAL`` is 11.7.0's measured timing (2.1 s per unload or
eviction, ``/health`` blocked meanwhile, a hung start given up after 608 s):
the contract test replays the transcripts with it on trio's virtual clock.

**Switches.** Faults are switched on by methods that return a
:class:`~slotfsm.testing.Switch` (``hanging``, ``failing``,
``hanging_unload``, ``failing_unload``, ``dropping_replies``, ``delaying``,
``busy``, ``health_fault``, ``duplicate_rows``); each stays on until its
``off()`` or the end of its ``with`` block.  Tests read back every request
the fake received (``requests``, ``loads()``, ...) and wait on it without
sleeping (``wait_hanging``, ``wait_hanging_unload``, ``wait_changed``).

**Background work.** The real server finishes a request whose client gave
up: a ``/load`` abandoned after a timeout still loads (ADR-0007 §3, late
arrival).  On the loopback server (``serve()``) that is always so.  In
process (``transport()``) the app runs inside the client's call, so the fake
finishes abandoned requests only while it is entered as an async context
manager, which holds a task group for them::

    async with FakeLemonade(models) as fake:
        ...  # a cancelled client call no longer cancels the fake's handling

Outside that context a cancelled in-process call cancels the fake's handling
of it (a hung ``/load`` abandoned by its client then loads nothing).  Leaving
the context cancels whatever is still running.

One instance serves one event loop at a time.  ``/health``'s
``model_loaded`` names the most recently *used* loaded model, as the
server's code does.  The fake is an offline server: a model not downloaded
cannot be downloaded (500 "CURL error: Couldn't resolve host name").
"""

from __future__ import annotations

import hmac
import json
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, suppress
from typing import Any, ClassVar, Self, cast

import anyio
import attrs
import httpx

from slotfsm.lemonade import DEFAULT_MAX_HEALTH_BYTES
from slotfsm.testing import _replies as replies
from slotfsm.testing._http import ConnectionDropped, Receive, Scope, Send, serve_asgi
from slotfsm.testing._replies import Reply, json_reply, load_error, plain_error
from slotfsm.testing._residency import Loaded, Residency
from slotfsm.testing._switches import Hang, Switch, Switchboard
from slotfsm.testing._values import (
    HEALTH_TYPES,
    MODEL_TYPES,
    FakeModel,
    FakeTiming,
    HealthFault,
    RecordedRequest,
)

__all__ = ["PREFIXES", "FakeLemonade"]

PREFIXES: tuple[str, ...] = ("/api/v1/", "/v1/", "/api/v0/", "/v0/")
"""Every API route answers under each of these."""

_PROTECTED = ("/api/", "/v0/", "/v1/")
_POST_ROUTES = frozenset({"load", "unload", "chat"})
_GET_ROUTES = frozenset({"health", "models", "model", "system-info"})
_FILE_MISSING_PHRASES = ("not found", "does not exist", "No such file")
_OFFLINE = "CURL error: Couldn't resolve host name"
_START_FAILED = "llama-server failed to start"


@attrs.frozen
class _Failure:
    message: str
    retry_succeeds: bool


def _route_of(path: str) -> tuple[str, bool]:
    """The normalised route name of ``path`` and whether it needs the API key."""
    if path == "/live":
        return "live", False
    protected = path.startswith(_PROTECTED)
    for prefix in PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            if rest.startswith("models/") and len(rest) > len("models/"):
                return "model", protected
            if rest == "chat/completions":
                return "chat", protected
            return (rest if rest in _POST_ROUTES | _GET_ROUTES else "other"), protected
    return "other", protected


def _is_file_missing(message: str) -> bool:
    """The router's test for a failure that must not trigger the evict-all."""
    return any(phrase in message for phrase in _FILE_MISSING_PHRASES)


def _now_or_none() -> float | None:
    try:
        return anyio.current_time()
    except RuntimeError:  # no event loop running
        return None


async def _take(seconds: float) -> None:
    """Let ``seconds`` pass; none at all (not even a checkpoint) for zero."""
    if seconds > 0:
        await anyio.sleep(seconds)


class FakeLemonade:
    """A fake Lemonade Server 11.7.0: an ASGI 3 application with test switches.

    ``models`` is the catalog (``FakeModel`` values, or plain names for
    ``llm`` models).  ``max_models`` overrides the per-type limits (default
    1 per type, as the server's ``max_loaded_models``; -1 for unlimited).
    With ``api_key`` set, every ``/api/*``, ``/v0/*``, ``/v1/*`` route wants
    ``Authorization: Bearer <api_key>``.  ``version`` is what ``/health``
    reports; ``newer_fields=False`` gives the few ``/health`` fields of
    10.6.0 instead of 11.7.0's.  ``backends`` maps each llama.cpp backend to
    its ``system-info`` state; ``llamacpp_backend`` must be ``auto`` or one
    whose state is not ``unsupported``.  ``timing`` is described in the
    module docstring; it may be changed at any time through :attr:`timing`.

    Use it in process with ``httpx.AsyncClient(transport=fake.transport(),
    base_url="http://lemonade")``, or on a loopback socket with ``async with
    fake.serve() as url``.
    """

    LAST_USE_OFFSET_MS: ClassVar[int] = 1_000
    """``last_use`` of a model used at the instant the fake booted."""

    LLAMA_SERVER: ClassVar[str] = "/opt/lemonade/bin/llama-server"
    """The executable the ``/health`` rows' ``launch_command`` names."""

    DEFAULT_CTX_SIZE: ClassVar[int] = 4096
    """The ``ctx_size`` of a load that gives none (as 11.7.0 configured by default)."""

    DEFAULT_BACKENDS: ClassVar[Mapping[str, str]] = {
        "cpu": "installed",
        "cuda": "unsupported",
        "metal": "unsupported",
        "rocm": "unsupported",
        "system": "unsupported",
        "vulkan": "unsupported",
    }
    """The llama.cpp backends of the recorded CPU-only host, with their states."""

    def __init__(
        self,
        models: Iterable[FakeModel | str] = (),
        *,
        max_models: Mapping[str, int] | None = None,
        api_key: str | None = None,
        version: str = "11.7.0",
        newer_fields: bool = True,
        backends: Mapping[str, str] | None = None,
        timing: FakeTiming = FakeTiming.INSTANT,
    ) -> None:
        self._catalog: dict[str, FakeModel] = {}
        for model in models:
            entry = model if isinstance(model, FakeModel) else FakeModel(model)
            if entry.name in self._catalog:
                raise ValueError(f"duplicate model name {entry.name!r}")
            self._catalog[entry.name] = entry
        self._max_models = dict.fromkeys(HEALTH_TYPES, 1)
        for model_type, limit in (max_models or {}).items():
            if model_type not in MODEL_TYPES:
                raise ValueError(f"unknown model type {model_type!r} in max_models")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit == 0 or limit < -1:
                raise ValueError(f"max_models[{model_type!r}] must be >= 1 or -1, not {limit!r}")
            self._max_models[model_type] = limit
        self._api_key = api_key.encode("utf-8") if api_key is not None else None
        self.version = version
        self.newer_fields = newer_fields
        self._backends = dict(backends if backends is not None else self.DEFAULT_BACKENDS)
        usable = [name for name, state in self._backends.items() if state != "unsupported"]
        self._default_backend = usable[0] if usable else "cpu"
        self.timing = timing
        """How long starts and unloads take (see :class:`FakeTiming`)."""

        self._residency = Residency()
        self._log: list[RecordedRequest] = []
        self._switches = Switchboard(self._notify)
        self._hanging: Counter[str] = Counter()
        self._hanging_unloads: Counter[str] = Counter()
        self._deleted: set[str] = set()
        self._evict_all_count = 0
        self._loads_in_flight = 0
        self._max_loads_in_flight = 0
        self._model_loads_in_flight: Counter[str] = Counter()
        self._max_model_loads_in_flight: Counter[str] = Counter()
        self._boot = _now_or_none()
        self._last_stamp = 0
        self._load_lock: anyio.Lock | None = None
        self._router_lock: anyio.Lock | None = None
        self._changed: anyio.Event | None = None
        self._background: anyio.abc.TaskGroup | None = None
        self._exit_stack: AsyncExitStack | None = None

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI 3 entry point (``http`` and ``lifespan`` scopes)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if self._background is None:
            reply = await self._handle(scope, body)
        else:
            reply = await self._handle_in_background(self._background, scope, body)
        headers = [
            (b"content-type", reply.content_type),
            (b"content-length", str(len(reply.body)).encode("ascii")),
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._ensure_boot()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __aenter__(self) -> Self:
        """Hold a task group in which every request is handled to its end (see above)."""
        if self._exit_stack is not None:
            raise RuntimeError("this FakeLemonade is already entered")
        stack = AsyncExitStack()
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)  # runs first: nothing left waits forever
        self._exit_stack, self._background = stack, tasks
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._exit_stack, self._background = self._exit_stack, None, None
        assert stack is not None
        return await stack.__aexit__(*exc_info)

    async def _handle_in_background(
        self, tasks: anyio.abc.TaskGroup, scope: Scope, body: bytes
    ) -> Reply:
        """Handle the request in the fake's own task: a caller that leaves does not stop it."""
        send, receive = anyio.create_memory_object_stream[Reply | ConnectionDropped](1)

        async def handle() -> None:
            with send:
                try:
                    outcome: Reply | ConnectionDropped = await self._handle(scope, body)
                except ConnectionDropped as exc:
                    outcome = exc
                with suppress(anyio.BrokenResourceError):  # the caller gave up
                    send.send_nowait(outcome)

        tasks.start_soon(handle)
        with receive:
            try:
                outcome = await receive.receive()
            except anyio.EndOfStream:  # the fake was closed under the request
                raise ConnectionDropped from None
        if isinstance(outcome, ConnectionDropped):
            raise outcome
        return outcome

    def transport(self) -> httpx.ASGITransport:
        """An httpx transport that calls this app in process, on the caller's clock."""
        return httpx.ASGITransport(app=self)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> AbstractAsyncContextManager[str]:
        """Serve on a real TCP socket in the current event loop; yields the base URL.

        ``port=0`` picks a free port.  Leaving the context closes the socket and
        cancels every connection, hung handlers included.
        """
        return serve_asgi(self, host, port)

    # -------------------------------------------------------------- dispatch

    async def _handle(self, scope: Scope, body: bytes) -> Reply:
        now = self._ensure_boot()
        method = str(scope["method"]).upper()
        path = str(scope["path"])
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        route, protected = _route_of(path)
        authorized = self._is_authorized(scope.get("headers", []))
        record = RecordedRequest(
            method=method,
            path=path,
            route=route,
            body=_parse_json(body),
            raw_body=body,
            at=now,
            authorized=authorized,
            query=query,
        )
        index = len(self._log)
        self._log.append(record)
        self._notify()
        counts_as_load = route == "load" and method == "POST"
        if counts_as_load:
            self._loads_in_flight += 1
            self._max_loads_in_flight = max(self._max_loads_in_flight, self._loads_in_flight)
        reply: Reply | None = None
        dropped = False
        try:
            if protected and not authorized:
                reply = plain_error(401, "Invalid or missing API key")
            else:
                reply = await self._dispatch(method, route, path, query, body)
                dropped = self._drops_reply(route, record.body)
        finally:
            if counts_as_load:
                self._loads_in_flight -= 1
            status = reply.status if reply is not None and not dropped else None
            if index < len(self._log) and self._log[index] is record:
                self._log[index] = attrs.evolve(
                    record, status=status, done_at=anyio.current_time(), dropped=dropped
                )
            self._notify()
        if dropped:
            raise ConnectionDropped
        return reply

    def _drops_reply(self, route: str, body: object) -> bool:
        """Whether the answer to this (handled) request is dropped instead of sent."""
        if route == "health":
            return self._health_fault() is HealthFault.DROP
        if route in ("load", "unload") and isinstance(body, dict):
            names = {body.get(key) for key in ("model_name", "model")}
            return any(
                isinstance(name, str) and self._switches.latest("drop", name) is not None
                for name in names
            )
        return False

    async def _dispatch(self, method: str, route: str, path: str, query: str, body: bytes) -> Reply:
        if route == "live" and method == "GET":
            return json_reply(200, {"status": "ok"})
        if route in ("load", "unload") and method == "GET":
            return plain_error(405, "Method Not Allowed. Use POST for this endpoint")
        if method == "POST":
            if route == "load":
                return await self._load(body)
            if route == "unload":
                return await self._unload(body)
            if route == "chat":
                return await self._chat(body)
        if method == "GET":
            if route == "health":
                return await self._health()
            if route == "models":
                return self._models(query)
            if route == "model":
                return self._model(urllib.parse.unquote(path.partition("/models/")[2]))
            if route == "system-info":
                return json_reply(200, replies.system_info(self._backends, self._default_backend))
        return replies.no_such_route(path)

    def _is_authorized(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """The server drops the header's first 7 characters ("Bearer ") and compares the rest."""
        if self._api_key is None:
            return True
        for name, value in headers:
            if bytes(name).lower() == b"authorization":
                return hmac.compare_digest(bytes(value)[7:], self._api_key)
        return False

    def _lookup(self, spelling: str) -> FakeModel | None:
        """The catalog entry a name addresses: its public id or its prefixed spelling."""
        model = self._catalog.get(spelling)
        if model is not None:
            return model
        for model in self._catalog.values():
            if spelling in model.spellings:
                return model
        return None

    # ----------------------------------------------------------------- /load

    async def _load(self, body: bytes) -> Reply:
        if not body:
            return plain_error(400, "Request body is required but was empty")
        try:
            request = json.loads(body)
        except json.JSONDecodeError as exc:
            return replies.invalid_json(exc)
        if not isinstance(request, dict):
            return replies.invalid_request(
                "[json.exception.type_error.305] cannot use operator[] with a string "
                f"argument with {replies.json_type(request)}"
            )
        sent = request.get("model_name")
        if not isinstance(sent, str):
            return replies.invalid_request(
                "[json.exception.type_error.302] type must be string, "
                f"but is {replies.json_type(sent)}"
            )
        model = self._lookup(sent)
        if model is None:
            return replies.model_not_found(sent, self._catalog)
        options = self._resolve_options(request)
        if isinstance(options, str):  # refused before anything is touched
            return load_error(sent, options)
        if not model.downloaded:  # the download step, before the router: no eviction
            if model.name in self._deleted:  # the directory watcher drops it
                self._deleted.discard(model.name)
                self._catalog.pop(model.name, None)
                self._notify()
            return load_error(sent, _OFFLINE)
        self._model_loads_in_flight[model.name] += 1
        self._max_model_loads_in_flight[model.name] = max(
            self._max_model_loads_in_flight[model.name], self._model_loads_in_flight[model.name]
        )
        try:
            async with self._loads():
                return await self._load_serialized(model, sent, options)
        finally:
            self._model_loads_in_flight[model.name] -= 1

    def _resolve_options(self, request: Mapping[str, object]) -> dict[str, object] | str:
        """The options a start uses (``null`` is "not given"), or why they are refused."""
        ctx_size = request.get("ctx_size")
        if isinstance(ctx_size, bool) or not isinstance(ctx_size, int):
            ctx_size = self.DEFAULT_CTX_SIZE  # null, a string, a float: ignored
        resolved: dict[str, object] = {"ctx_size": ctx_size}
        for key, default in (("llamacpp_args", ""), ("llamacpp_backend", "auto")):
            value = request.get(key)
            if value is None:
                value = default
            if not isinstance(value, str):
                return (
                    "[json.exception.type_error.302] type must be string, "
                    f"but is {replies.json_type(value)}"
                )
            resolved[key] = value
        if resolved["llamacpp_backend"] == "auto":
            resolved["llamacpp_backend"] = self._default_backend
        return resolved

    async def _load_serialized(
        self, model: FakeModel, sent: str, options: dict[str, object]
    ) -> Reply:
        """One load, holding the server-wide load lock."""
        current = self._residency.get(model.name)
        if current is not None:
            if current.options == options:
                self._residency.touch(model.name, self._stamp())
                self._notify()
                return self._loaded_reply(model, sent)
            await self._evict([current])  # an option change: the old process goes first
        limit = self._max_models.get(model.type, 1)
        while (victim := self._residency.lru_victim(model.type, limit)) is not None:
            await self._evict([victim])
        failure = await self._start(model, options, retry=False)
        if failure is not None:
            if _is_file_missing(failure):
                return load_error(sent, failure)
            # "Load failed with non-file-not-found error, evicting all models and retrying..."
            await self._evict_everything()
            failure = await self._start(model, options, retry=True)
            if failure is not None:
                return load_error(sent, failure)
        self._residency.add(model, options, self._stamp())
        self._notify()
        return self._loaded_reply(model, sent)

    async def _start(
        self, model: FakeModel, options: Mapping[str, object], retry: bool
    ) -> str | None:
        """Start a backend for ``model``: ``None`` once ready, or why it failed."""
        backend = str(options["llamacpp_backend"])
        if self._backends.get(backend, "unsupported") == "unsupported":
            usable = [name for name, state in self._backends.items() if state != "unsupported"]
            return f"'llamacpp.backend' must be one of: {', '.join(['auto', *usable])}"
        refusal = replies.reserved_arg(str(options["llamacpp_args"]))
        if refusal is not None:
            return refusal
        for switch in self._switches.all("hang", model.name):
            hang = cast(Hang, switch)
            if hang.catch():
                outcome = await self._hang(model.name, hang)
                if outcome == "killed":
                    return _START_FAILED
                if outcome == "timed out":
                    await _take(self.timing.unload)  # the process is stopped
                    return _START_FAILED
                break
        delay = self._switches.latest("delay", model.name)
        await _take(float(cast(float, delay.value)) if delay is not None else self.timing.start)
        failing = self._switches.latest("fail", model.name)
        if failing is None:
            return None
        failure = cast(_Failure, failing.value)
        return None if retry and failure.retry_succeeds else failure.message

    async def _hang(self, name: str, hang: Hang) -> str:
        """Wait on a start that does not become ready: "ready", "killed" or "timed out"."""
        killed = hang.killed
        self._hanging[name] += 1
        hang.hung += 1
        self._notify()
        try:
            timeout = self.timing.start_timeout
            with anyio.move_on_after(timeout if timeout is not None else float("inf")):
                while hang.on and hang.killed == killed:
                    await self.wait_changed()
                return "ready" if hang.killed == killed else "killed"
            return "timed out"
        finally:
            self._hanging[name] -= 1
            hang.hung -= 1
            self._notify()

    @staticmethod
    def _loaded_reply(model: FakeModel, sent: str) -> Reply:
        body = {
            "checkpoint": model.checkpoint,
            "model_name": sent,
            "recipe": model.recipe,
            "status": "success",
        }
        return json_reply(200, body)

    async def _evict(self, entries: Iterable[Loaded]) -> None:
        """Stop these backends one after another, holding the router lock."""
        async with self._router():
            for entry in entries:
                await _take(self.timing.unload)
                if self._residency.get(entry.model.name) is entry:
                    self._residency.remove(entry.model.name)
                    self._notify()

    async def _evict_everything(self) -> None:
        self._evict_all_count += 1
        await self._evict(self._residency.entries())

    # --------------------------------------------------------------- /unload

    async def _unload(self, body: bytes) -> Reply:
        request = _parse_json(body)
        sent = next(
            (
                value
                for key in ("model_name", "model")
                if isinstance(request, dict)
                and isinstance(value := request.get(key), str)
                and value
            ),
            None,
        )
        if sent is None:
            await self._evict(self._residency.entries())
            return json_reply(
                200, {"message": "All models unloaded successfully", "status": "success"}
            )
        if self._switches.latest("hang_unload", sent) is not None:
            self._hanging_unloads[sent] += 1
            self._notify()
            try:
                while self._switches.latest("hang_unload", sent) is not None:
                    await self.wait_changed()
            finally:
                self._hanging_unloads[sent] -= 1
        async with self._router():
            model = self._lookup(sent)
            entry = self._residency.get(model.name if model is not None else sent)
            if entry is None:
                return plain_error(404, f"Model not loaded: {sent}")
            failure = self._switches.latest("fail_unload", sent)
            if failure is not None:
                return plain_error(500, str(failure.value))
            await _take(self.timing.unload)
            if self._residency.get(entry.model.name) is entry:
                self._residency.remove(entry.model.name)
            self._notify()
        body_out = {
            "message": "Model unloaded successfully",
            "model_name": sent,
            "status": "success",
        }
        return json_reply(200, body_out)

    # ---------------------------------------------------------------- /health

    def _health_fault(self) -> HealthFault | None:
        switch = self._switches.latest("health")
        return cast(HealthFault, switch.value) if switch is not None else None

    async def _health(self) -> Reply:
        while self._health_fault() is HealthFault.HANG:
            await self.wait_changed()
        if self.timing.health_waits:
            async with self._router():
                pass  # an eviction in progress holds it
        fault = self._health_fault()
        if fault is HealthFault.NOT_JSON:
            return Reply(200, b"<html><body>Service busy</body></html>", b"text/html")
        if fault is HealthFault.WRONG_SHAPE:
            return json_reply(200, {"status": "ok", "all_models_loaded": "not-a-list"})
        if fault is HealthFault.SERVER_ERROR:
            return plain_error(500, "Internal server error")
        if fault is HealthFault.HUGE:
            pad = " " * (DEFAULT_MAX_HEALTH_BYTES + 1)
            return json_reply(200, {"status": "ok", "all_models_loaded": [], "pad": pad})
        rows = [
            replies.health_row(
                entry,
                entry.last_use,
                self._switches.latest("busy", entry.model.name) is not None,
                full=self.newer_fields,
                llama_server=self.LLAMA_SERVER,
            )
            for entry in self._residency.entries()
        ]
        if self._switches.latest("duplicate_rows") is not None:
            rows = [row for row in rows for _ in range(2)]
        if fault is HealthFault.NAME_NOT_STRING:
            rows.append({"model_name": 42, "type": "llm", "last_use": self._to_ms(self._now())})
        recent = self._residency.most_recent()
        body: dict[str, object] = {
            "all_models_loaded": rows,
            "max_models": dict(self._max_models),
            "model_loaded": recent.model.name if recent is not None else None,
            "status": "ok",
            "version": self.version,
        }
        if self.newer_fields:
            body.update(
                pinned_helper_models=dict.fromkeys(self._max_models, 0),
                pinned_models=dict.fromkeys(self._max_models, 0),
                telemetry={"enabled": False},
                update_check_done=True,
                websocket_port=replies.WEBSOCKET_PORT,
            )
        return json_reply(200, dict(sorted(body.items())))

    # ------------------------------------------------------ /models, /chat

    def _models(self, query: str) -> Reply:
        show_all = urllib.parse.parse_qs(query).get("show_all", [""])[-1] == "true"
        data = [
            replies.model_object(self._catalog[name])
            for name in sorted(self._catalog)
            if show_all or self._catalog[name].downloaded
        ]
        return json_reply(200, {"data": data, "object": "list"})

    def _model(self, spelling: str) -> Reply:
        model = self._lookup(spelling)
        if model is None:
            return replies.model_not_found(spelling, self._catalog)
        return json_reply(200, replies.model_object(model))

    async def _chat(self, body: bytes) -> Reply:
        """A token chat completion: it loads the model when needed and moves its ``last_use``."""
        request = _parse_json(body)
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            return replies.invalid_request("'model' is required")
        sent = str(request["model"])
        model = self._lookup(sent)
        if model is None:
            return replies.model_not_found(sent, self._catalog)
        if self._residency.get(model.name) is None:
            options = self._resolve_options({})
            assert not isinstance(options, str)
            async with self._loads():
                loaded = await self._load_serialized(model, sent, options)
            if loaded.status != 200:
                return loaded
        self._residency.touch(model.name, self._stamp())
        self._notify()
        max_tokens = request.get("max_tokens")
        tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 16
        messages = request.get("messages")
        created = int(self._to_ms(self._now()) // 1000)
        completion = replies.chat_completion(
            model.name, tokens, created, messages if isinstance(messages, list) else []
        )
        return json_reply(200, completion)

    # ------------------------------------------------------------- switches

    def hanging(self, name: str, *, starts: int | None = None) -> Hang:
        """Starts of ``name`` do not become ready while the switch is on.

        A hung load holds the load lock, so every later load waits behind it;
        ``/health`` still answers and does not list it, and an ``/unload`` of
        it answers 404 "Model not loaded".  Turning the switch off lets the
        hung starts become ready (the loads then succeed); ``kill()`` fails
        them instead (the evict-all and its retry follow); with
        ``timing.start_timeout`` set, a start hung that long fails the same
        way, after its process is stopped.  ``starts`` limits how many starts
        it catches (``starts=1``: only the first, like a backend that hangs
        once).  A load that only refreshes an already-loaded model with the
        same options starts nothing and does not hang.
        """
        hang = Hang(self._switches, name, starts)
        self._switches.add(hang)
        return hang

    def failing(
        self,
        name: str,
        message: str = _START_FAILED,
        *,
        retry_succeeds: bool = False,
    ) -> Switch[object]:
        """Backend starts of ``name`` fail with ``message`` while the switch is on.

        Unless ``message`` contains "not found", "does not exist" or "No such
        file", the fake then unloads every model and retries once; the retry
        succeeds only with ``retry_succeeds``.
        """
        return self._switches.add(
            Switch(self._switches, "fail", name, _Failure(message, retry_succeeds))
        )

    def hanging_unload(self, name: str) -> Switch[object]:
        """``/unload`` of ``name`` (as sent) blocks, before acting, while the switch is on."""
        return self._switches.add(Switch(self._switches, "hang_unload", name, None))

    def failing_unload(
        self, name: str, message: str = "Failed to stop the backend"
    ) -> Switch[object]:
        """``/unload`` of loaded ``name`` answers ``500 {"error": message}`` and keeps it.

        An unload of ``name`` when it is not loaded still answers 404 "Model not loaded".
        """
        return self._switches.add(Switch(self._switches, "fail_unload", name, message))

    def dropping_replies(self, name: str) -> Switch[object]:
        """``/load`` and ``/unload`` naming ``name`` take effect, then the connection drops.

        The client gets no answer, as if the server or the network died at
        that instant.  In process the client sees ``httpx.RemoteProtocolError``.
        """
        return self._switches.add(Switch(self._switches, "drop", name, None))

    def delaying(self, name: str, seconds: float) -> Switch[object]:
        """Backend starts of ``name`` take ``seconds`` (instead of ``timing.start``)."""
        if seconds < 0:
            raise ValueError("a start delay cannot be negative")
        return self._switches.add(Switch(self._switches, "delay", name, seconds))

    def busy(self, name: str) -> Switch[object]:
        """``/health`` shows ``name`` in use (``is_busy``, ``is_streaming``, ``in_use``)."""
        return self._switches.add(Switch(self._switches, "busy", name, None))

    def health_fault(self, fault: HealthFault) -> Switch[object]:
        """``GET /health`` misbehaves as ``fault`` says while the switch is on."""
        return self._switches.add(Switch(self._switches, "health", None, fault))

    def duplicate_rows(self) -> Switch[object]:
        """``/health`` lists every loaded model twice (identical rows) while the switch is on.

        Not a :class:`HealthFault`: the answer stays well-formed and true.
        """
        return self._switches.add(Switch(self._switches, "duplicate_rows", None, None))

    # -------------------------------------------------------------- actions

    def mark_used(self, name: str) -> None:
        """Simulate an inference request on loaded model ``name``: refresh its ``last_use``.

        Raises ``KeyError`` when ``name`` is not loaded.
        """
        if self._residency.get(name) is None:
            raise KeyError(f"model {name!r} is not loaded")
        self._residency.touch(name, self._stamp())
        self._notify()

    def restart(self) -> None:
        """Simulate a server restart: every model is forgotten and the clock starts over.

        Switches, the catalog and the request log are kept; loads in flight
        carry on.
        """
        self._residency.clear()
        self._boot = _now_or_none()
        self._last_stamp = 0
        self._notify()

    def evict_all(self) -> None:
        """Unload every model at once, as another client's failed load would (counted)."""
        self._evict_all_count += 1
        self._residency.clear()
        self._notify()

    def add_model(self, model: FakeModel | str) -> None:
        """Add (or replace) a catalog entry (a file copied into the models directory)."""
        entry = model if isinstance(model, FakeModel) else FakeModel(model)
        self._catalog[entry.name] = entry
        self._deleted.discard(entry.name)
        self._notify()

    def remove_model(self, name: str) -> None:
        """Remove a catalog entry: later loads of it get 404 (a loaded copy stays loaded)."""
        self._catalog.pop(name, None)
        self._notify()

    def delete_file(self, name: str) -> None:
        """Delete the file of catalog entry ``name`` (a loaded copy stays loaded).

        As on 11.7.0 offline: the next ``/load`` of it answers 500
        "CURL error: Couldn't resolve host name" (the server still knows the
        model, finds it not downloaded and tries to download it), touching no
        other model; then the entry is gone, and loads get 404.
        """
        model = self._catalog[name]
        self._catalog[name] = attrs.evolve(model, downloaded=False)
        self._deleted.add(name)
        self._notify()

    # ----------------------------------------------------------- inspection

    def clear_log(self) -> None:
        """Forget the requests received so far (for long runs); counters are kept."""
        self._log.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order of arrival (a copy)."""
        return list(self._log)

    def loads(self) -> list[RecordedRequest]:
        """The ``POST /load`` requests, under any prefix."""
        return [r for r in self._log if r.route == "load" and r.method == "POST"]

    def unloads(self) -> list[RecordedRequest]:
        """The ``POST /unload`` requests, under any prefix."""
        return [r for r in self._log if r.route == "unload" and r.method == "POST"]

    def health_polls(self) -> list[RecordedRequest]:
        """The ``GET /health`` requests, under any prefix."""
        return [r for r in self._log if r.route == "health" and r.method == "GET"]

    def loaded_models(self) -> list[str]:
        """Public ids of the models loaded now, in the order they became ready."""
        return self._residency.names()

    @property
    def evict_all_count(self) -> int:
        """How many times every model was unloaded by a failed load (or ``evict_all``)."""
        return self._evict_all_count

    @property
    def loads_in_flight(self) -> int:
        """``POST /load`` requests received and not answered yet."""
        return self._loads_in_flight

    @property
    def max_concurrent_loads(self) -> int:
        """The most ``POST /load`` requests ever in flight at once."""
        return self._max_loads_in_flight

    def max_concurrent_loads_of(self, name: str) -> int:
        """The most ``POST /load`` requests for ``name`` ever in flight at once."""
        return self._max_model_loads_in_flight[name]

    async def wait_hanging(self, name: str, count: int = 1) -> None:
        """Wait until ``count`` starts of ``name`` are hung on a ``hanging`` switch."""
        while self._hanging[name] < count:
            await self.wait_changed()

    async def wait_hanging_unload(self, name: str, count: int = 1) -> None:
        """Wait until ``count`` unloads of ``name`` are blocked on a ``hanging_unload`` switch."""
        while self._hanging_unloads[name] < count:
            await self.wait_changed()

    async def wait_changed(self) -> None:
        """Wait until something about the fake changes.

        That is: a request arrives or is answered (or abandoned), a model is loaded or
        unloaded or used, a start starts hanging, or a switch is flipped.  Use
        it in a loop around the condition you want::

            while "qwen" not in fake.loaded_models():
                await fake.wait_changed()
        """
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # -------------------------------------------------------------- helpers

    def _ensure_boot(self) -> float:
        now = anyio.current_time()
        if self._boot is None:
            self._boot = now
        return now

    def _now(self) -> float:
        return self._ensure_boot()

    def _to_ms(self, at: float) -> int:
        boot = self._boot if self._boot is not None else at
        return round((at - boot) * 1000) + self.LAST_USE_OFFSET_MS

    def _stamp(self) -> int:
        """``last_use`` for a use now: the clock in ms, and later than every earlier use.

        Two uses within one millisecond would tie on the real server; the fake
        keeps them apart so that what tests see of the LRU order is certain.
        """
        self._last_stamp = max(self._to_ms(self._now()), self._last_stamp + 1)
        return self._last_stamp

    def _loads(self) -> anyio.Lock:
        """The load lock: loads are serialized server-wide."""
        if self._load_lock is None:
            self._load_lock = anyio.Lock()
        return self._load_lock

    def _router(self) -> anyio.Lock:
        """The router lock: held by every unload and eviction, awaited by ``/health``."""
        if self._router_lock is None:
            self._router_lock = anyio.Lock()
        return self._router_lock

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
