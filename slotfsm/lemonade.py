"""An async client for the few Lemonade Server routes slotfsm needs.

:class:`LemonadeClient` speaks to ``load``, ``unload``, ``health``,
``models/{name}`` and ``system-info`` under the API prefix (``/api/v1``, or
``/v1``) and to ``/live``, straight over an httpx transport (a client's
cookies, redirects and auth flows have no use here).  It never retries
anything, never sends ``null`` fields, never sends an unload without a model
name, and never lets the API key reach a repr, a log line or an exception
message.

Everything that can go wrong surfaces as a subclass of :class:`LemonadeError`:

- :class:`ServerUnreachable`: no answer at all (connection refused, reset or
  closed before a response);
- :class:`ServerTimeout`: an httpx timeout (connect, write, pool, or read on
  the routes that have one);
- :class:`ServerHTTPError`: the server answered with a non-2xx status; its
  ``status``, ``message`` and ``code`` come from either error-body shape;
- :class:`ServerParseError`: a 2xx body that is not the JSON the server
  promises, or a body larger than the route's cap.

Response bodies are streamed and read only up to a cap (``max_body_bytes``;
``max_health_bytes`` for ``/health``); one whose ``Content-Length`` already
says it is larger is not read at all.

**Timings** (Lemonade 11.7.0 on a 2-core host, ``lemonade-api.md`` "Timing"
in the shared reference): one unload or eviction takes about 2.1 s, and
``/health`` waits for every eviction in progress, so during an evict-all it
is blocked for about 2.1 s per loaded model (10 s was observed with 5
models).  The default ``timeout`` is therefore :data:`DEFAULT_TIMEOUT` (30 s):
a ``/health`` or ``/unload`` waiting behind the evict-all of up to 14 loaded
models still answers in time, so a healthy but busy server is not reported
unreachable.  Raise it for servers that keep more models loaded.  ``/load``
has no read timeout at all (the caller bounds it, ADR-0007 §3).
"""

from __future__ import annotations

import json
import logging
import math
import types
import urllib.parse
from collections.abc import Mapping
from typing import Any, Self

import anyio
import attrs
import httpx

from slotfsm.config import positive_seconds
from slotfsm.errors import (
    ConfigError,
    LemonadeError,
    ServerHTTPError,
    ServerParseError,
    ServerTimeout,
    ServerUnreachable,
)

__all__ = [
    "API_PREFIXES",
    "DEFAULT_MAX_HEALTH_BYTES",
    "DEFAULT_TIMEOUT",
    "Health",
    "LemonadeClient",
    "LemonadeError",
    "LoadResult",
    "LoadedModel",
    "ModelInfo",
    "ServerHTTPError",
    "ServerParseError",
    "ServerTimeout",
    "ServerUnreachable",
    "SystemInfo",
]

logger = logging.getLogger(__name__)

API_PREFIXES: tuple[str, ...] = ("/api/v1", "/v1")
"""The API prefixes a client may use (``/live`` has none); the first is the default."""

DEFAULT_TIMEOUT = 30.0
"""Seconds for every phase of a request but ``/load``'s read (see the module docstring)."""

DEFAULT_MAX_HEALTH_BYTES = 16 << 20
"""The default cap on a ``/health`` body.

An 11.7.0 row with typical paths is about 850 bytes (``tests/test_lemonade_client.py``
measures it), so 10,000 loaded models take about 8.5 MB; the cap leaves room for
longer paths and options.
"""

_MESSAGE_CHARS = 200


# -- errors ------------------------------------------------------------------


class _TooBig(ServerParseError):
    """A 2xx body over the route's cap."""


# -- values ------------------------------------------------------------------


@attrs.frozen
class LoadResult:
    """What a successful ``/load`` reported."""

    model_name: str
    checkpoint: str | None = None
    recipe: str | None = None


def _read_only(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class LoadedModel:
    """One model listed by ``/health``.

    ``last_use`` is the server's monotonic clock in milliseconds, not a Unix
    time: only compare it with an earlier reading of the same server.
    ``busy`` is ``is_busy or is_streaming`` on newer servers, ``False`` on
    servers that do not report them.  ``checkpoint`` is what the server
    loaded the name from (a path for a local file, a hub id for a built-in);
    ``model_file`` is the file the backend was started with (the element
    after ``-m`` in the row's ``launch_command``), or ``None`` when the row
    has none.  ``raw`` is the whole row as the server sent it (read-only),
    for the fields slotfsm does not interpret (``backend_url``, ``pid``, ...);
    it takes no part in equality or hashing.  The ``raw`` of a row read from
    ``/health`` is, as a rule, not a copy but a read-only view of the very row
    that ``Health.raw`` lists.
    """

    name: str
    type: str | None = None
    last_use: int | None = None
    checkpoint: str | None = None
    recipe: str | None = None
    busy: bool = False
    status: str | None = None
    model_file: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only, eq=False, repr=False)


@attrs.frozen
class ModelInfo:
    """One model as ``GET /api/v1/models/{name}`` describes it.

    ``id`` is the model's canonical name: the one ``/health`` lists, whatever
    spelling was asked for (``extra.X`` gives ``X``).  ``checkpoint`` is what
    the server will load for it: an absolute path for a local file (for a
    sub-folder model, the folder), a hub id (``org/repo:variant``) for a
    built-in.  ``source`` is ``extra_models_dir`` for local files,
    ``huggingface`` for built-ins.  ``raw`` is the whole object (read-only).
    """

    id: str
    checkpoint: str | None = None
    recipe: str | None = None
    source: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only, eq=False, repr=False)


@attrs.frozen
class SystemInfo:
    """What ``GET /api/v1/system-info`` says about the llama.cpp backends.

    ``llamacpp_backends`` maps each backend (``cpu``, ``vulkan``, ...) to its
    state (``installed``, ``unsupported``, ...); ``default_backend`` is the
    one ``auto`` means.  ``raw`` is the whole answer (read-only).
    """

    llamacpp_backends: Mapping[str, str] = attrs.field(factory=dict, converter=_read_only)
    default_backend: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only, eq=False, repr=False)

    def allows_backend(self, name: str) -> bool:
        """Whether ``/load`` accepts ``llamacpp_backend=name`` without the evict-all.

        11.7.0 accepts ``auto`` and every backend whose state is not
        ``unsupported``; anything else fails the load and evicts every model.
        """
        if name == "auto":
            return True
        state = self.llamacpp_backends.get(name)
        return state is not None and state != "unsupported"


def _to_pairs(value: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(value.items()))


@attrs.frozen
class Health:
    """The parsed ``/health`` answer.

    ``status`` is ``None`` when the server sent none.  ``max_models`` is
    stored as sorted pairs so that a ``Health`` stays hashable; the property
    hands it out as a read-only mapping.  ``raw`` is the whole answer as the
    server sent it (read-only; not part of equality or hashing).
    ``skipped`` counts the rows left out because they were malformed.
    """

    status: str | None
    version: str | None = None
    models: tuple[LoadedModel, ...] = ()
    _max_models: tuple[tuple[str, int], ...] = attrs.field(factory=dict, converter=_to_pairs)
    raw: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only, eq=False, repr=False)
    skipped: int = attrs.field(default=0, eq=False)
    # Every slot looks its model up in every observation: index the names once.
    _by_name: Mapping[str, LoadedModel] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        by_name: dict[str, LoadedModel] = {}
        for model in self.models:
            by_name.setdefault(model.name, model)
        object.__setattr__(self, "_by_name", types.MappingProxyType(by_name))

    @property
    def max_models(self) -> Mapping[str, int]:
        """The per-type model limits (``-1`` means unlimited)."""
        return types.MappingProxyType(dict(self._max_models))

    @property
    def names(self) -> frozenset[str]:
        """The names of the loaded models."""
        return frozenset(self._by_name)

    def __contains__(self, name: object) -> bool:
        """Whether a model of that name is loaded."""
        return name in self._by_name

    def get(self, name: str) -> LoadedModel | None:
        """The loaded model called ``name``, or ``None``."""
        return self._by_name.get(name)


# -- the client --------------------------------------------------------------


class LemonadeClient:
    """An async client for one Lemonade Server.

    ``base_url`` is the server root (``http://127.0.0.1:13305``); API requests
    go to ``<api_prefix>/<route>``, where ``api_prefix`` is ``/api/v1`` (the
    default) or ``/v1`` (``ConfigError`` otherwise).  ``api_key``, when
    given, is sent as ``Authorization: Bearer KEY`` and shown nowhere else.
    ``timeout`` (default :data:`DEFAULT_TIMEOUT`, 30 s, chosen from the
    server's measured timings: see the module docstring) bounds every phase
    of every request except the read of ``/load`` (see :meth:`load`).
    ``max_body_bytes`` caps every body but ``/health``'s, which
    ``max_health_bytes`` caps (default :data:`DEFAULT_MAX_HEALTH_BYTES`).
    ``transport`` replaces the default one (e.g. an
    :class:`httpx.MockTransport` or an ASGI transport in tests).  Environment
    proxies and ``.netrc`` are ignored: the server is reached directly.

    Use it as an async context manager or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_body_bytes: int = 1 << 20,
        max_health_bytes: int = DEFAULT_MAX_HEALTH_BYTES,
        api_prefix: str = API_PREFIXES[0],
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"base_url must be an http(s) URL, got {base_url!r}")
        for knob, limit in (
            ("max_body_bytes", max_body_bytes),
            ("max_health_bytes", max_health_bytes),
        ):
            if isinstance(limit, bool) or not (isinstance(limit, int) and limit > 0):
                raise ConfigError(f"{knob} must be a positive int, got {limit!r}")
        prefix = api_prefix.rstrip("/") if isinstance(api_prefix, str) else api_prefix
        if prefix not in API_PREFIXES:
            raise ConfigError(
                f"api_prefix must be one of {', '.join(API_PREFIXES)}, got {api_prefix!r}"
            )
        from slotfsm import __version__  # the package is imported by the time a client is made

        headers = {"Accept": "application/json", "User-Agent": f"slotfsm/{__version__}"}
        if api_key is not None:
            # Checked here so that a bad key never reaches httpx, whose header
            # errors could quote it.  The message does not show the key.
            if not isinstance(api_key, str) or not api_key or not api_key.isprintable():
                raise ConfigError("api_key must be a non-empty printable string")
            if not api_key.isascii() or any(c.isspace() for c in api_key):
                raise ConfigError("api_key must be ASCII without whitespace")
            headers["Authorization"] = f"Bearer {api_key}"
        self._base_url = str(url).rstrip("/")
        self._api_key = api_key
        self._timeout = positive_seconds("timeout", timeout)
        self._max_body_bytes = max_body_bytes
        self._max_health_bytes = max_health_bytes
        self._prefix = f"{prefix}/"
        self._warned_health_cap = False
        self._last_health: tuple[bytes, Health] | None = None  # the latest body and its reading
        self._headers = httpx.Headers(headers)  # normalized once, copied per request
        self._json_headers = httpx.Headers({**headers, "Content-Type": "application/json"})
        self._phases = httpx.Timeout(self._timeout).as_dict()
        self._load_phases = httpx.Timeout(self._timeout, read=None).as_dict()
        self._urls: dict[str, httpx.URL] = {}
        # Requests go straight to the transport: a client's cookies, redirects,
        # auth flows, proxies and URL merging are all unused here, and cost
        # twice the request itself on a local server.
        self._transport = (
            transport if transport is not None else httpx.AsyncHTTPTransport(retries=0)
        )

    @property
    def base_url(self) -> str:
        """The server root this client talks to."""
        return self._base_url

    @property
    def api_prefix(self) -> str:
        """The prefix of every API route, e.g. ``/api/v1``."""
        return self._prefix.rstrip("/")

    def __repr__(self) -> str:
        return f"LemonadeClient({self._base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (and the transport)."""
        await self._transport.aclose()

    # -- routes --------------------------------------------------------------

    async def load(self, model_name: str, **options: str | int | float | bool | None) -> LoadResult:
        """Load ``model_name`` with ``options`` (``POST /api/v1/load``).

        The body is ``{"model_name": model_name, **options}``; options whose
        value is ``None`` are left out (11.7.0 reads ``null`` as "not given"
        too; older servers' parsers broke on it).  ``llamacpp_args`` must be
        one string (``TypeError`` otherwise); other values must be str, int,
        finite float or bool.  All of this is checked before any request is made.

        ADR-0007: this method never retries, and it has no read timeout of its
        own (the server queues loads without limit and gives a backend up to
        600 s).  The caller enforces the slot's load timeout by wrapping the
        call in ``anyio.fail_after`` / ``anyio.move_on_after``; cancelling it
        abandons the request cleanly.  A 200 does not prove that the other
        models survived (a failed load can make the server evict every model,
        retry, and answer 200): callers must re-read :meth:`health` after every
        load, successful or not.

        Raises :class:`ServerHTTPError` (404 unknown model, 500 load failure,
        400, 409), :class:`ServerUnreachable`, :class:`ServerTimeout` (connect
        or write phase) or :class:`ServerParseError`.
        """
        _check_model_name(model_name)
        body: dict[str, object] = {"model_name": model_name}
        for key, value in options.items():
            if value is None:
                continue
            if key == "llamacpp_args" and not isinstance(value, str):
                raise ConfigError(f"llamacpp_args must be one string, got {type(value).__name__}")
            if not isinstance(value, str | int | float):
                raise ConfigError(f"option {key!r} has unsupported type {type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"option {key!r} must be finite, got {value!r}")
            body[key] = value
        route, doc = await self._send("POST", self._prefix + "load", body, unbounded_read=True)
        obj = _object(route, doc)
        name = obj.get("model_name", model_name)
        if not isinstance(name, str) or not name:
            raise ServerParseError(route, "'model_name' is not a non-empty string")
        return LoadResult(
            model_name=name,
            checkpoint=_opt_str(route, obj, "checkpoint", "body"),
            recipe=_opt_str(route, obj, "recipe", "body"),
        )

    async def unload(self, model_name: str) -> bool:
        """Unload ``model_name`` (``POST /api/v1/unload``).

        ADR-0007: an unload is never sent with an empty body or name, because
        the server reads that as "unload every model".  An empty,
        whitespace-only or missing ``model_name`` raises ``ValueError`` before
        any request is made.

        Returns ``True`` when the server unloaded the model and ``False`` when
        it answered 404 "Model not loaded" (the model is not loaded either way,
        so that is not an error).  Any other 404 (e.g. a server without this
        route) and every other failure raise a :class:`LemonadeError`.
        """
        _check_model_name(model_name)
        try:
            route, doc = await self._send(
                "POST", self._prefix + "unload", {"model_name": model_name}
            )
        except ServerHTTPError as exc:
            if exc.status == 404 and "not loaded" in exc.message.lower():
                return False
            raise
        _object(route, doc)
        return True

    async def health(self) -> Health:
        """Read ``GET /api/v1/health``.

        The reading as a whole must be a JSON object with a model list
        (``all_models_loaded``, or ``loaded`` on older servers), a string
        ``version`` and int ``max_models`` when present; otherwise it raises
        :class:`ServerParseError` rather than being guessed at.  A missing
        ``status`` is tolerated (``Health.status`` is then ``None``).

        Rows are read leniently: a row that is not an object, has no
        non-empty string ``model_name``, or whose ``last_use`` is not an int,
        ``type``, ``checkpoint``, ``recipe``, ``status`` not strings,
        ``is_busy``, ``is_streaming``, ``pinned`` not bools or
        ``recipe_options`` not an object (``null`` counts as absent) is left
        out and logged, and the rest of the reading stands.  Unknown fields
        are ignored (and kept in ``raw``).

        A model listed twice is merged into one entry, leaning toward "in
        use": the first entry's fields, ``busy`` if either entry says busy, and
        the larger ``last_use`` (all readings come from one monotonic clock, so
        the larger is the most recent use).

        A body over ``max_health_bytes`` raises :class:`ServerParseError`; the
        first time, it is also logged as a warning, since the controller is
        then blind to the server until the cap is raised.

        A body byte for byte the same as the previous one (with no row left
        out) is the same reading: the previous :class:`Health` is returned
        without parsing it again, so a server with nothing new costs a read
        and a comparison.
        """
        try:
            route, status, data = await self._read(
                "GET", self._prefix + "health", limit=self._max_health_bytes
            )
        except _TooBig as exc:
            if not self._warned_health_cap:
                self._warned_health_cap = True
                logger.warning(
                    "%s; every reading this large is ignored: raise max_health_bytes", exc
                )
            raise
        last = self._last_health
        if last is not None and last[0] == data:  # the same bytes: the same reading
            return last[1]
        health = _parse_health(route, _json(route, status, data))
        # Kept only when whole: a reading with rows left out is read (and logged) again.
        self._last_health = (data, health) if not health.skipped else None
        return health

    async def model_info(self, name: str) -> ModelInfo:
        """Describe model ``name`` (``GET /api/v1/models/{name}``).

        Any spelling the server accepts works (``X``, ``extra.X``); the
        answer's ``id`` is the canonical one.  An unknown name raises
        :class:`ServerHTTPError` with ``status`` 404 and ``code``
        ``"model_not_found"``.
        """
        _check_model_name(name)
        path = self._prefix + "models/" + urllib.parse.quote(name, safe="")
        route, doc = await self._send("GET", path)
        obj = _object(route, doc)
        ident = obj.get("id")
        if not isinstance(ident, str) or not ident:
            raise ServerParseError(route, "'id' is not a non-empty string")
        return ModelInfo(
            id=ident,
            checkpoint=_opt_str(route, obj, "checkpoint", "body"),
            recipe=_opt_str(route, obj, "recipe", "body"),
            source=_opt_str(route, obj, "source", "body"),
            raw=obj,
        )

    async def system_info(self) -> SystemInfo:
        """The llama.cpp backends and their states (``GET /api/v1/system-info``).

        A server that lists no llama.cpp recipe gives an empty
        ``llamacpp_backends``.
        """
        route, doc = await self._send("GET", self._prefix + "system-info")
        obj = _object(route, doc)
        recipes = obj.get("recipes")
        llamacpp = recipes.get("llamacpp") if isinstance(recipes, dict) else None
        if llamacpp is None:
            return SystemInfo(raw=obj)
        where = "'recipes.llamacpp'"
        llamacpp = _object(route, llamacpp, where)
        states: dict[str, str] = {}
        backends = llamacpp.get("backends")
        if backends is not None:
            for name, backend in _object(route, backends, f"{where}.backends").items():
                state = _opt_str(route, _object(route, backend, name), "state", name)
                if state is not None:
                    states[name] = state
        return SystemInfo(
            llamacpp_backends=states,
            default_backend=_opt_str(route, llamacpp, "default_backend", where),
            raw=obj,
        )

    async def live(self) -> bool:
        """``GET /live``: ``True`` when the server answers ``{"status": "ok"}``.

        A liveness probe never raises a :class:`LemonadeError`: an unreachable
        server, a timeout, an error status or any other body gives ``False``.
        """
        try:
            _, doc = await self._send("GET", "/live")
        except LemonadeError:
            return False
        return isinstance(doc, dict) and doc.get("status") == "ok"

    # -- plumbing ------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None = None,
        *,
        unbounded_read: bool = False,
    ) -> tuple[str, object]:
        """Send one request (exactly one, see :meth:`_read`) and return ``(route, parsed JSON)``."""
        route, status, data = await self._read(method, path, body, unbounded_read=unbounded_read)
        return route, _json(route, status, data)

    async def _read(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None = None,
        *,
        unbounded_read: bool = False,
        limit: int | None = None,
    ) -> tuple[str, int, bytes]:
        """Send one request (exactly one) and return ``(route, status, body)`` of a 2xx answer.

        Every phase has ``timeout`` (but the read, with ``unbounded_read``);
        besides, a request with a bounded read must complete within
        ``timeout`` as a whole, so that a server trickling bytes, or a
        transport without timeouts of its own (an in-process ASGI app),
        cannot hold a caller forever.
        """
        cap = limit if limit is not None else self._max_body_bytes
        if unbounded_read:
            return await self._exchange(method, path, body, self._load_phases, cap)
        with anyio.move_on_after(self._timeout) as deadline:
            return await self._exchange(method, path, body, self._phases, cap)
        assert deadline.cancelled_caught
        raise ServerTimeout(f"{method} {path}", f"no complete answer within {self._timeout:g} s")

    async def _exchange(
        self,
        method: str,
        path: str,
        body: Mapping[str, object] | None,
        phases: dict[str, float | None],
        cap: int,
    ) -> tuple[str, int, bytes]:
        """One request and its bounded body; non-2xx raises :class:`ServerHTTPError`."""
        route = f"{method} {path}"
        request = httpx.Request(
            method,
            self._url(path),
            headers=self._headers if body is None else self._json_headers,
            content=None if body is None else json.dumps(body).encode(),
            extensions={"timeout": phases},
        )
        data = bytearray()
        too_big = False
        try:
            response = await self._transport.handle_async_request(request)
            response.request = request
            try:
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > cap:
                    too_big = True  # not a byte of it is read
                else:
                    # A streamed body is cut off past the limit; httpx then
                    # leaves its inner iterators to the garbage collector
                    # (trio reports that as a ResourceWarning).
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > cap:
                            too_big = True
                            break
                status = response.status_code
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise ServerTimeout(route, f"timed out ({type(exc).__name__})") from exc
        except httpx.DecodingError as exc:
            raise ServerParseError(route, self._redact(f"undecodable body: {exc}")) from exc
        except httpx.TransportError as exc:
            detail = self._redact(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            )
            raise ServerUnreachable(
                route, f"server unreachable at {self._base_url} ({detail})"
            ) from exc

        if not 200 <= status < 300:
            message, code = _error_fields(bytes(data), status)
            raise ServerHTTPError(route, status, self._redact(message), code)
        if too_big:
            raise _TooBig(route, f"HTTP {status}: body larger than {cap} bytes")
        return route, status, bytes(data)

    def _url(self, path: str) -> httpx.URL:
        """The absolute URL of ``path``; the fixed routes' are parsed once."""
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self._base_url + path)
            if "/models/" not in path:  # one per registry name: not worth keeping
                self._urls[path] = url
        return url

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key in text:
            return text.replace(self._api_key, "[redacted]")
        return text


# -- parsing -----------------------------------------------------------------


def _json(route: str, status: int, data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ServerParseError(route, f"HTTP {status}: body is not JSON") from exc


def _check_model_name(model_name: object) -> None:
    if not isinstance(model_name, str) or not model_name.strip():
        raise ConfigError(f"model_name must be a non-empty string, got {model_name!r}")


def _error_fields(data: bytes, status: int) -> tuple[str, str | None]:
    """The message and code of an error body, in either of the server's shapes."""
    text = data.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, str) and error:
            return error, None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = error.get("code")
            if not isinstance(code, str):
                code = error.get("type")
            return error["message"], code if isinstance(code, str) else None
    message = text[:_MESSAGE_CHARS].strip()
    return message or httpx.codes.get_reason_phrase(status) or f"HTTP {status}", None


def _object(route: str, doc: object, where: str = "body") -> dict[str, object]:
    if not isinstance(doc, dict):
        raise ServerParseError(route, f"{where} is not a JSON object")
    return doc


def _opt_str(route: str, obj: Mapping[str, object], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ServerParseError(route, f"{where}: {key!r} is {type(value).__name__}, not a string")


def _opt_bool(route: str, obj: Mapping[str, object], key: str, where: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise ServerParseError(route, f"{where}: {key!r} is {type(value).__name__}, not a bool")


def _opt_int(route: str, obj: Mapping[str, object], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ServerParseError(route, f"{where}: {key!r} is {type(value).__name__}, not an int")


def _model_file(obj: Mapping[str, object]) -> str | None:
    """The element after ``-m`` in the row's ``launch_command``, if there is one."""
    command = obj.get("launch_command")
    return None if command is None else _file_after_m(command)


def _file_after_m(command: object) -> str | None:
    """The element after ``-m`` in a ``launch_command``, if it is a non-empty string."""
    if not isinstance(command, list):
        return None
    try:
        file = command[command.index("-m") + 1]
    except (ValueError, IndexError):
        return None
    return file if isinstance(file, str) and file else None


def _parse_model(route: str, index: int, entry: object) -> LoadedModel:
    """One row, checked field by field; raises :class:`ServerParseError` naming what is wrong.

    This is the reference reading of a row: :func:`_parse_health` reads the
    common row faster, to the same result, and hands every other row here.
    """
    where = f"model #{index}"
    obj = _object(route, entry, where)
    name = obj.get("model_name")
    if not isinstance(name, str) or not name:
        raise ServerParseError(route, f"{where}: 'model_name' is not a non-empty string")
    where = f"model {name!r}"
    if obj.get("recipe_options") is not None:
        _object(route, obj["recipe_options"], f"{where}: 'recipe_options'")
    _opt_bool(route, obj, "pinned", where)
    busy = _opt_bool(route, obj, "is_busy", where)
    streaming = _opt_bool(route, obj, "is_streaming", where)
    return LoadedModel(
        name=name,
        type=_opt_str(route, obj, "type", where),
        last_use=_opt_int(route, obj, "last_use", where),
        checkpoint=_opt_str(route, obj, "checkpoint", where),
        recipe=_opt_str(route, obj, "recipe", where),
        busy=busy or streaming,
        status=_opt_str(route, obj, "status", where),
        model_file=_model_file(obj),
        raw=obj,
    )


# A reading is built without the classes' __init__ (see _parse_health): these
# set one slot each, bypassing the frozen classes' __setattr__ as attrs' own
# __init__ does.  tests/test_lemonade_client.py checks that a parsed reading
# has every field of both classes set.
_new = object.__new__
(
    _set_name,
    _set_type,
    _set_last_use,
    _set_checkpoint,
    _set_recipe,
    _set_busy,
    _set_status,
    _set_model_file,
    _set_row,
) = (
    LoadedModel.__dict__[name].__set__
    for name in (
        "name",
        "type",
        "last_use",
        "checkpoint",
        "recipe",
        "busy",
        "status",
        "model_file",
        "raw",
    )
)
(
    _set_health_status,
    _set_version,
    _set_models,
    _set_max_models,
    _set_raw,
    _set_skipped,
    _set_by_name,
) = (
    Health.__dict__[name].__set__
    for name in ("status", "version", "models", "_max_models", "raw", "skipped", "_by_name")
)


def _merge(first: LoadedModel, again: LoadedModel) -> LoadedModel:
    uses = [use for use in (first.last_use, again.last_use) if use is not None]
    return attrs.evolve(
        first,
        last_use=max(uses) if uses else None,
        busy=first.busy or again.busy,
    )


def _parse_health(route: str, doc: object) -> Health:
    """A whole ``/health`` reading (see :meth:`LemonadeClient.health`).

    A reading may list 10,000 rows and is read on every reconcile pass, so
    the row that is the rule (a dict of exactly the types ``json.loads``
    makes, each field well-formed) is checked in one expression, inline: no
    call per field, no message built in advance, no copy of the row (its
    ``raw`` is a read-only view of the freshly parsed row, which ``Health.raw``
    lists too).  That check accepts only rows that :func:`_parse_model`
    accepts and builds the same :class:`LoadedModel`; every other row,
    malformed or merely unusual (a ``str`` subclass, say), is read by
    :func:`_parse_model`, which accepts it or names what is wrong.
    """
    obj = _object(route, doc)
    reading_status = obj.get("status")
    if reading_status is not None and not isinstance(reading_status, str):
        raise ServerParseError(route, "'status' is not a string")
    key = "all_models_loaded" if "all_models_loaded" in obj else "loaded"
    entries = obj.get(key)
    if not isinstance(entries, list):
        raise ServerParseError(route, "no model list ('all_models_loaded' or 'loaded')")
    # The models by name, in the order first listed: Health's index as well.
    by_name: dict[str, LoadedModel] = {}
    skipped = 0
    new = _new
    read_only = types.MappingProxyType
    for index, entry in enumerate(entries):
        if type(entry) is dict:
            get = entry.get
            name = get("model_name")
            kind = get("type")
            last_use = get("last_use")
            checkpoint = get("checkpoint")
            recipe = get("recipe")
            status = get("status")
            busy = get("is_busy")
            streaming = get("is_streaming")
            pinned = get("pinned")
            options = get("recipe_options")
            if (
                type(name) is str
                and name
                and (kind is None or type(kind) is str)
                and (last_use is None or type(last_use) is int)
                and (checkpoint is None or type(checkpoint) is str)
                and (recipe is None or type(recipe) is str)
                and (status is None or type(status) is str)
                and (busy is None or busy is True or busy is False)
                and (streaming is None or streaming is True or streaming is False)
                and (pinned is None or pinned is True or pinned is False)
                and (options is None or type(options) is dict)
            ):
                command = get("launch_command")
                model = new(LoadedModel)
                _set_name(model, name)
                _set_type(model, kind)
                _set_last_use(model, last_use)
                _set_checkpoint(model, checkpoint)
                _set_recipe(model, recipe)
                _set_busy(model, busy is True or streaming is True)
                _set_status(model, status)
                _set_model_file(model, None if command is None else _file_after_m(command))
                _set_row(model, read_only(entry))
                seen = by_name.setdefault(name, model)
                if seen is not model:
                    by_name[name] = _merge(seen, model)
                continue
        try:
            model = _parse_model(route, index, entry)
        except ServerParseError as exc:
            skipped += 1
            logger.warning("%s; that row is left out of the reading", exc)
            continue
        seen = by_name.setdefault(model.name, model)
        if seen is not model:
            by_name[model.name] = _merge(seen, model)

    max_models: dict[str, int] = {}
    raw = obj.get("max_models")
    if raw is not None:
        for kind, limit in _object(route, raw, "'max_models'").items():
            if not isinstance(limit, int) or isinstance(limit, bool):
                raise ServerParseError(route, f"'max_models'[{kind!r}] is not an int")
            max_models[kind] = limit
    version = _opt_str(route, obj, "version", "body")
    # What Health(...) builds, but with the index above rather than a second one.
    health = new(Health)
    _set_health_status(health, reading_status)
    _set_version(health, version)
    _set_models(health, tuple(by_name.values()))
    _set_max_models(health, _to_pairs(max_models))
    _set_raw(health, _read_only(obj))
    _set_skipped(health, skipped)
    _set_by_name(health, read_only(by_name))
    return health
