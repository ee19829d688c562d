"""``FakeLemonade``: an ASGI app that behaves like Lemonade Server's model API.

It reproduces what slotfsm depends on (``../shared/reference/lemonade-api.md``):
the four route prefixes and ``/live``; 401 without the API key; 405 for a GET
on a POST route; ``/load`` serialized server-wide, with per-type LRU, the
same-options refresh and the nuclear evict-all with its one retry; ``/unload``
that unloads everything when it gets no model name; ``/health`` with
``last_use`` in milliseconds on a monotonic clock.  The clock is
``anyio.current_time()``, so under trio's ``MockClock`` it is virtual time.

Tests steer it with plain methods (``hang``, ``fail``, ``set_load_delay``,
``mark_used``, ``restart``, ``evict_all``, ``set_health_fault``,
``hang_unload``, ``fail_unload``, ``drop_reply``, ``set_duplicate_rows``, ...), read
back every request it received (``requests``, ``loads()``, ...), and wait on
it without sleeping (``wait_hanging``, ``wait_hanging_unload``, ``wait_changed``).

``/health``'s ``model_loaded`` names the most recently *used* loaded model,
as the server's code does (which is the most recently loaded one unless
``mark_used`` or a same-options reload touched another).

One instance serves one event loop at a time.  Behaviour that differs from
the real server:

- In process (``transport()``), a client that gives up on a request (a
  timeout, a cancelled task) cancels the fake's handling of it, because the
  ASGI app runs inside the client's call: a hung ``/load`` abandoned by its
  client releases the load lock and loads nothing.  On the loopback server
  (``serve()``) the handler keeps running after the client has gone, as on
  the real server.
- ``/load`` knows the llamacpp options only (``KNOWN_OPTIONS``); other body
  fields are ignored, as the real server ignores options a recipe lacks.
"""

from __future__ import annotations

import hmac
import json
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import anyio
import attrs
import httpx

from slotfsm.testing._http import ConnectionDropped, Receive, Scope, Send, serve_asgi
from slotfsm.testing._residency import Loaded, Residency
from slotfsm.testing._values import (
    DEFAULT_MAX_TYPES,
    MODEL_TYPES,
    FakeModel,
    HealthFault,
    RecordedRequest,
)

__all__ = ["PREFIXES", "FakeLemonade"]

PREFIXES: tuple[str, ...] = ("/api/v1/", "/v1/", "/api/v0/", "/v0/")
"""Every API route answers under each of these."""

_POST_ROUTES = frozenset({"load", "unload"})
_GET_ROUTES = frozenset({"health", "models"})
_FILE_MISSING_PHRASES = ("not found", "does not exist", "No such file")


@attrs.frozen
class _Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"


@attrs.frozen
class _LoadFailure:
    message: str
    retry_succeeds: bool


def _json(status: int, payload: object) -> _Reply:
    return _Reply(status, json.dumps(payload).encode("utf-8"))


def _json_type(value: object) -> str:
    """The JSON type name of a parsed value, as the server's parser words it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _route_of(path: str) -> tuple[str, bool]:
    """The normalised route name of ``path`` and whether it is under a prefix."""
    if path == "/live":
        return "live", False
    for prefix in PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            return (rest if rest in _POST_ROUTES | _GET_ROUTES else "other"), True
    return "other", False


def _invalid_request(detail: str) -> _Reply:
    error = {
        "message": f"Invalid request: {detail}",
        "type": "invalid_request_error",
        "code": "invalid_request",
    }
    return _json(400, {"error": error})


def _model_error(status: int, code: str, name: str, message: str) -> _Reply:
    error = {
        "message": message,
        "type": code,
        "param": "model",
        "code": code,
        "requested_model": name,
    }
    return _json(status, {"error": error})


def _load_error(name: str, detail: str) -> _Reply:
    return _model_error(500, "model_load_error", name, f"Failed to load model '{name}': {detail}")


def _is_file_missing(message: str) -> bool:
    """The router's test for a failure that must not trigger the evict-all."""
    return any(phrase in message for phrase in _FILE_MISSING_PHRASES)


def _now_or_none() -> float | None:
    try:
        return anyio.current_time()
    except RuntimeError:  # no event loop running
        return None


class FakeLemonade:
    """A fake Lemonade Server: an ASGI 3 application with test switches.

    ``models`` is the catalog (``FakeModel`` values, or plain names for
    ``llm`` models).  ``max_models`` overrides the per-type limits (default
    1 per type; -1 for unlimited).  With ``api_key`` set, every prefixed
    route wants ``Authorization: Bearer <api_key>``.  ``version`` is what
    ``/health`` reports.  ``newer_fields`` adds the newer servers' per-model
    ``is_busy``, ``is_streaming``, ``status`` and ``pinned`` to ``/health``.

    Use it in process with ``httpx.AsyncClient(transport=fake.transport(),
    base_url="http://lemonade")``, or on a loopback socket with ``async with
    fake.serve() as url``.
    """

    LAST_USE_OFFSET_MS: ClassVar[int] = 1_000
    """``last_use`` of a model used at the instant the fake booted."""

    KNOWN_OPTIONS: ClassVar[Mapping[str, str]] = {
        "ctx_size": "number",
        "llamacpp_backend": "string",
        "llamacpp_args": "string",
    }
    """The ``/load`` options the fake records (name to JSON type); others are ignored."""

    def __init__(
        self,
        models: Iterable[FakeModel | str] = (),
        *,
        max_models: Mapping[str, int] | None = None,
        api_key: str | None = None,
        version: str = "10.6.0",
        newer_fields: bool = False,
    ) -> None:
        self._catalog: dict[str, FakeModel] = {}
        for model in models:
            entry = model if isinstance(model, FakeModel) else FakeModel(model)
            if entry.name in self._catalog:
                raise ValueError(f"duplicate model name {entry.name!r}")
            self._catalog[entry.name] = entry
        self._max_models = dict.fromkeys(DEFAULT_MAX_TYPES, 1)
        for model_type, limit in (max_models or {}).items():
            if model_type not in MODEL_TYPES:
                raise ValueError(f"unknown model type {model_type!r} in max_models")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit == 0 or limit < -1:
                raise ValueError(f"max_models[{model_type!r}] must be >= 1 or -1, not {limit!r}")
            self._max_models[model_type] = limit
        self._api_key = api_key.encode("utf-8") if api_key is not None else None
        self.version = version
        self.newer_fields = newer_fields

        self._residency = Residency()
        self._log: list[RecordedRequest] = []
        self._hung: set[str] = set()
        self._hanging: Counter[str] = Counter()
        self._failures: dict[str, _LoadFailure] = {}
        self._hung_unloads: set[str] = set()
        self._hanging_unloads: Counter[str] = Counter()
        self._unload_failures: dict[str, str] = {}
        self._drops: set[str] = set()
        self._delays: dict[str, float] = {}
        self._health_fault: HealthFault | None = None
        self._duplicate_rows = False
        self._evict_all_count = 0
        self._loads_in_flight = 0
        self._max_loads_in_flight = 0
        self._model_loads_in_flight: Counter[str] = Counter()
        self._max_model_loads_in_flight: Counter[str] = Counter()
        self._boot = _now_or_none()
        self._load_lock: anyio.Lock | None = None
        self._changed: anyio.Event | None = None

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
        reply = await self._handle(scope, b"".join(chunks))
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

    async def _handle(self, scope: Scope, body: bytes) -> _Reply:
        now = self._ensure_boot()
        method = str(scope["method"]).upper()
        path = str(scope["path"])
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        route, prefixed = _route_of(path)
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
        counts_as_load = route == "load" and method == "POST"
        if counts_as_load:
            self._loads_in_flight += 1
            self._max_loads_in_flight = max(self._max_loads_in_flight, self._loads_in_flight)
        reply: _Reply | None = None
        dropped = False
        try:
            reply = await self._dispatch(method, route, path, query, body, prefixed, authorized)
            dropped = self._drops_reply(route, record.body)
        finally:
            if counts_as_load:
                self._loads_in_flight -= 1
            status = reply.status if reply is not None and not dropped else None
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
            return self._health_fault is HealthFault.DROP
        if route in _POST_ROUTES and isinstance(body, dict):
            return any(body.get(key) in self._drops for key in ("model_name", "model"))
        return False

    async def _dispatch(
        self,
        method: str,
        route: str,
        path: str,
        query: str,
        body: bytes,
        prefixed: bool,
        authorized: bool,
    ) -> _Reply:
        if prefixed and not authorized:
            return _json(401, {"error": "Invalid or missing API key"})
        if route == "live" and method == "GET":
            return _json(200, {"status": "ok"})
        if route in _POST_ROUTES and method == "GET":
            return _json(405, {"error": "Method Not Allowed. Use POST for this endpoint"})
        if route == "load" and method == "POST":
            return await self._load(body)
        if route == "unload" and method == "POST":
            return await self._unload(body)
        if route == "health" and method == "GET":
            return await self._health()
        if route == "models" and method == "GET":
            return self._models(query)
        return _json(404, {"error": f"Not Found: {method} {path}"})

    def _is_authorized(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        if self._api_key is None:
            return True
        expected = b"Bearer " + self._api_key
        for name, value in headers:
            if bytes(name).lower() == b"authorization":
                return hmac.compare_digest(bytes(value), expected)
        return False

    # ----------------------------------------------------------------- /load

    async def _load(self, body: bytes) -> _Reply:
        try:
            request = json.loads(body)
        except ValueError as exc:
            return _invalid_request(f"[json.exception.parse_error.101] parse error: {exc}")
        if not isinstance(request, dict):
            return _invalid_request(
                "[json.exception.type_error.305] cannot use operator[] with a string "
                f"argument with {_json_type(request)}"
            )
        name = request.get("model_name")
        if not isinstance(name, str):
            return _invalid_request(
                f"[json.exception.type_error.302] type must be string, but is {_json_type(name)}"
            )
        model = self._catalog.get(name)
        if model is None:
            return _model_error(
                404,
                "model_not_found",
                name,
                f"Model '{name}' was not found. "
                "Use GET /api/v1/models?show_all=true to list the models this server knows.",
            )
        options: dict[str, object] = {}
        for key, json_type in self.KNOWN_OPTIONS.items():
            if key not in request:
                continue
            value = request[key]
            if _json_type(value) != json_type:
                return _load_error(
                    name,
                    f"[json.exception.type_error.302] type must be {json_type}, "
                    f"but is {_json_type(value)}",
                )
            options[key] = value
        self._model_loads_in_flight[name] += 1
        self._max_model_loads_in_flight[name] = max(
            self._max_model_loads_in_flight[name], self._model_loads_in_flight[name]
        )
        try:
            async with self._get_load_lock():
                return await self._load_serialized(model, options)
        finally:
            self._model_loads_in_flight[name] -= 1

    async def _load_serialized(self, model: FakeModel, options: dict[str, object]) -> _Reply:
        """One load, holding the server-wide load lock."""
        name = model.name
        current = self._residency.get(name)
        if current is not None:
            self._residency.touch(name, self._now())  # last_use moves at load start
            if current.options == options:
                return self._loaded_reply(model)
            self._residency.remove(name)
        self._residency.make_room(model.type, self._max_models.get(model.type, 1))
        self._notify()
        await self._start_backend(name)
        failure = self._failures.get(name)
        if failure is not None:
            if _is_file_missing(failure.message):
                return _load_error(name, failure.message)
            # "Load failed with non-file-not-found error, evicting all models and retrying..."
            self._evict_everything()
            if not failure.retry_succeeds:
                return _load_error(name, failure.message)
        self._residency.add(model, options, self._now())
        self._notify()
        return self._loaded_reply(model)

    async def _start_backend(self, name: str) -> None:
        """Wait as long as the backend child takes to become ready."""
        if name in self._hung:
            self._hanging[name] += 1
            self._notify()
            try:
                while name in self._hung:
                    await self.wait_changed()
            finally:
                self._hanging[name] -= 1
        delay = self._delays.get(name, 0.0)
        if delay > 0:
            await anyio.sleep(delay)

    @staticmethod
    def _loaded_reply(model: FakeModel) -> _Reply:
        return _json(
            200,
            {
                "status": "success",
                "model_name": model.name,
                "checkpoint": model.checkpoint,
                "recipe": model.recipe,
            },
        )

    # --------------------------------------------------------------- /unload

    async def _unload(self, body: bytes) -> _Reply:
        name = ""
        request = _parse_json(body) if body else None
        if isinstance(request, dict):
            for key in ("model_name", "model"):
                value = request.get(key)
                if isinstance(value, str):
                    name = value
                    break
        if not name:
            self._residency.clear()
            self._notify()
            return _json(200, {"status": "success", "message": "All models unloaded successfully"})
        if name in self._hung_unloads:
            self._hanging_unloads[name] += 1
            self._notify()
            try:
                while name in self._hung_unloads:
                    await self.wait_changed()
            finally:
                self._hanging_unloads[name] -= 1
        if self._residency.get(name) is None:
            return _json(404, {"error": f"Model not loaded: {name}"})
        failure = self._unload_failures.get(name)
        if failure is not None:
            return _json(500, {"error": failure})
        self._residency.remove(name)
        self._notify()
        return _json(
            200,
            {"status": "success", "message": "Model unloaded successfully", "model_name": name},
        )

    # ---------------------------------------------------------------- /health

    async def _health(self) -> _Reply:
        while self._health_fault is HealthFault.HANG:
            await self.wait_changed()
        fault = self._health_fault
        if fault is HealthFault.NOT_JSON:
            return _Reply(200, b"<html><body>Service busy</body></html>", b"text/html")
        if fault is HealthFault.WRONG_SHAPE:
            return _json(200, {"status": "ok", "all_models_loaded": "not-a-list"})
        if fault is HealthFault.SERVER_ERROR:
            return _json(500, {"error": "Internal server error"})
        if fault is HealthFault.HUGE:
            return _json(200, {"status": "ok", "all_models_loaded": [], "pad": " " * (2 << 20)})
        recent = self._residency.most_recent()
        rows = [self._health_row(e) for e in self._residency.entries()]
        if self._duplicate_rows:
            rows = [row for row in rows for _ in range(2)]
        if fault is HealthFault.NAME_NOT_STRING:
            rows.append({"model_name": 42, "type": "llm", "last_use": self._to_ms(self._now())})
        return _json(
            200,
            {
                "status": "ok",
                "version": self.version,
                "model_loaded": recent.model.name if recent is not None else None,
                "all_models_loaded": rows,
                "max_models": dict(self._max_models),
            },
        )

    def _health_row(self, entry: Loaded) -> dict[str, object]:
        row: dict[str, object] = {
            "model_name": entry.model.name,
            "checkpoint": entry.model.checkpoint,
            "type": entry.model.type,
            "device": "gpu",
            "backend_url": f"http://127.0.0.1:{entry.port}/v1",
            "pid": entry.pid,
            "recipe": entry.model.recipe,
            "recipe_options": dict(entry.options),
            "last_use": self._to_ms(entry.last_use),
        }
        if self.newer_fields:
            row["is_busy"] = entry.busy
            row["is_streaming"] = entry.busy
            row["status"] = "in_use" if entry.busy else "ready"
            row["pinned"] = False
        return row

    # ---------------------------------------------------------------- /models

    def _models(self, query: str) -> _Reply:
        show_all = urllib.parse.parse_qs(query).get("show_all", [""])[-1] == "true"
        data = [
            {
                "id": m.name,
                "object": "model",
                "checkpoint": m.checkpoint,
                "recipe": m.recipe,
                "downloaded": m.downloaded,
                "labels": [],
            }
            for m in self._catalog.values()
            if show_all or m.downloaded
        ]
        return _json(200, {"object": "list", "data": data})

    # ------------------------------------------------------------- switches

    def hang(self, name: str) -> None:
        """Make every load of ``name`` block (holding the load lock) until ``release``.

        A load that only refreshes an already-loaded model with the same
        options starts no backend and does not hang.
        """
        self._hung.add(name)
        self._notify()

    def release(self, name: str) -> None:
        """Let the hung loads of ``name`` go on, and stop hanging new ones."""
        self._hung.discard(name)
        self._notify()

    def fail(
        self,
        name: str,
        message: str = "llama-server failed to start",
        *,
        retry_succeeds: bool = False,
    ) -> None:
        """Make the backend start of ``name`` throw ``message`` (until ``clear_fail``).

        Unless ``message`` contains "not found", "does not exist" or "No such
        file", the fake then unloads every model and retries once; the retry
        succeeds only with ``retry_succeeds``.
        """
        self._failures[name] = _LoadFailure(message, retry_succeeds)
        self._notify()

    def clear_fail(self, name: str) -> None:
        """Let loads of ``name`` succeed again."""
        self._failures.pop(name, None)
        self._notify()

    def hang_unload(self, name: str) -> None:
        """Make every ``/unload`` of ``name`` block, before acting, until ``release_unload``."""
        self._hung_unloads.add(name)
        self._notify()

    def release_unload(self, name: str) -> None:
        """Let the hung unloads of ``name`` go on, and stop hanging new ones."""
        self._hung_unloads.discard(name)
        self._notify()

    def fail_unload(self, name: str, message: str = "Failed to stop the backend") -> None:
        """Make ``/unload`` of loaded ``name`` answer ``500 {"error": message}`` and keep it.

        Until ``clear_fail_unload``.  An unload of ``name`` when it is not
        loaded still answers 404 "Model not loaded".
        """
        self._unload_failures[name] = message
        self._notify()

    def clear_fail_unload(self, name: str) -> None:
        """Let unloads of ``name`` succeed again."""
        self._unload_failures.pop(name, None)
        self._notify()

    def drop_reply(self, name: str) -> None:
        """Handle every ``/load`` and ``/unload`` naming ``name``, then drop the connection.

        The request takes effect (a load loads, an unload unloads) but the
        client gets no answer: the connection closes, as it would if the
        server or the network died at that instant.  In process the client
        sees ``httpx.RemoteProtocolError``.  Until ``clear_drop_reply``.
        """
        self._drops.add(name)
        self._notify()

    def clear_drop_reply(self, name: str) -> None:
        """Answer requests naming ``name`` again."""
        self._drops.discard(name)
        self._notify()

    def set_load_delay(self, name: str, seconds: float) -> None:
        """Make every backend start of ``name`` take ``seconds`` (0 for instant)."""
        if seconds < 0:
            raise ValueError("a load delay cannot be negative")
        self._delays[name] = seconds
        self._notify()

    def mark_used(self, name: str) -> None:
        """Simulate an inference request on loaded model ``name``: refresh its ``last_use``.

        Raises ``KeyError`` when ``name`` is not loaded.
        """
        if self._residency.get(name) is None:
            raise KeyError(f"model {name!r} is not loaded")
        self._residency.touch(name, self._now())
        self._notify()

    def set_busy(self, name: str, busy: bool) -> None:
        """Mark loaded model ``name`` busy (shown only with ``newer_fields``).

        Raises ``KeyError`` when ``name`` is not loaded.
        """
        entry = self._residency.get(name)
        if entry is None:
            raise KeyError(f"model {name!r} is not loaded")
        entry.busy = busy
        self._notify()

    def restart(self) -> None:
        """Simulate a server restart: every model is forgotten and the clock starts over.

        Switches, the catalog and the request log are kept; loads in flight
        carry on.
        """
        self._residency.clear()
        self._boot = _now_or_none()
        self._notify()

    def evict_all(self) -> None:
        """Unload every model, as another client's failed load would (counted)."""
        self._evict_everything()

    def set_health_fault(self, fault: HealthFault | None) -> None:
        """Make ``GET /health`` misbehave as ``fault`` says; ``None`` restores it."""
        self._health_fault = fault
        self._notify()

    def set_duplicate_rows(self, on: bool) -> None:
        """List every loaded model twice in ``/health`` (identical rows) while ``on``.

        Not a :class:`HealthFault`: the answer stays well-formed and true.
        """
        self._duplicate_rows = on
        self._notify()

    def add_model(self, model: FakeModel | str) -> None:
        """Add (or replace) a catalog entry."""
        entry = model if isinstance(model, FakeModel) else FakeModel(model)
        self._catalog[entry.name] = entry
        self._notify()

    def remove_model(self, name: str) -> None:
        """Remove a catalog entry: later loads of it get 404 (a loaded copy stays loaded)."""
        self._catalog.pop(name, None)
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
        """Names of the models loaded now, in load order."""
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
        """Wait until ``count`` loads of ``name`` are blocked on its ``hang`` switch."""
        while self._hanging[name] < count:
            await self.wait_changed()

    async def wait_hanging_unload(self, name: str, count: int = 1) -> None:
        """Wait until ``count`` unloads of ``name`` are blocked on its ``hang_unload`` switch."""
        while self._hanging_unloads[name] < count:
            await self.wait_changed()

    async def wait_changed(self) -> None:
        """Wait until something about the fake changes.

        That is: a request is answered (or abandoned), a model is loaded or
        unloaded or used, a load starts hanging, or a switch is flipped.  Use
        it in a loop around the condition you want::

            while "qwen" not in fake.loaded_models():
                await fake.wait_changed()
        """
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # -------------------------------------------------------------- helpers

    def _evict_everything(self) -> None:
        self._evict_all_count += 1
        self._residency.clear()
        self._notify()

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

    def _get_load_lock(self) -> anyio.Lock:
        if self._load_lock is None:
            self._load_lock = anyio.Lock()
        return self._load_lock

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
