"""A minimal HTTP/1.1 server for an ASGI app, on a loopback socket, with anyio only.

It runs in the caller's event loop (asyncio or trio) and on the caller's
clock, which is the point: the served app and the test share one world.  It
understands what an HTTP client of a JSON API sends: a request line, headers
(at most 64 KiB), a ``Content-Length`` body (at most 1 MiB), keep-alive and
``Connection: close``.  Every response carries ``Content-Length``.  Chunked
request bodies are refused with 501.

Each connection is served by its own task, so a slow handler on one
connection never holds up another.  A handler keeps running when its client
goes away (like a threaded server), until it finishes or the server closes.
An app that raises :class:`ConnectionDropped` gets its connection closed
without an answer, as a server or a network dying at that moment would.
"""

from __future__ import annotations

import http
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = [
    "ASGIApp",
    "MAX_BODY_BYTES",
    "ConnectionDropped",
    "MAX_HEAD_BYTES",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "serve_asgi",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_HEAD_BYTES = 64 * 1024
"""Request line plus headers; more gets 431."""
MAX_BODY_BYTES = 1024 * 1024
"""Request body; more gets 413."""

_Headers = list[tuple[bytes, bytes]]


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised by an app to have its connection closed without any answer.

    On the loopback server the client then sees the connection close before
    a response.  It is an ``httpx.RemoteProtocolError`` so that, in process
    (``httpx.ASGITransport`` hands app exceptions to the client), the client
    sees the same error httpx raises for a real dropped connection.
    """

    def __init__(self) -> None:
        super().__init__("Server disconnected without sending a response.")


class _BadRequest(Exception):
    """The request cannot be served; answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class _Request:
    """One parsed request head plus its body."""

    method: str
    target: str
    http_version: str
    headers: _Headers
    body: bytes
    keep_alive: bool


@asynccontextmanager
async def serve_asgi(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0: any free port); yield the base URL.

    Leaving the context closes the listener and cancels every connection task,
    including handlers still running.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    shown = f"[{host}]" if ":" in host else host
    body_error: Exception | None = None
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, partial(_serve_connection, app, host, bound), tg)
        try:
            yield f"http://{shown}:{bound}"
        except Exception as exc:
            body_error = exc  # re-raised below, not wrapped in an exception group
        finally:
            tg.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


async def _serve_connection(
    app: ASGIApp, host: str, port: int, stream: anyio.abc.SocketStream
) -> None:
    """Serve requests on one connection until it closes or asks to."""
    try:
        client = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except (OSError, anyio.TypedAttributeLookupError):
        client = None
    peer = (str(client[0]), int(client[1])) if isinstance(client, tuple) else None
    async with stream:
        reader = BufferedByteReceiveStream(stream)
        while True:
            try:
                request = await _read_request(reader)
            except _BadRequest as exc:
                await _send_error(stream, exc.status, exc.message)
                return
            except (anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            try:
                status, headers, body = await _call_app(app, request, (host, port), peer)
            except ConnectionDropped:
                return  # leaving closes the connection: no answer at all
            except Exception:
                # Like httpx's ASGI transport: answer 500, then let the bug surface.
                await _send_error(stream, 500, "Internal Server Error")
                raise
            head_only = request.method == "HEAD"
            try:
                await stream.send(_render(status, headers, body, request.keep_alive, head_only))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if not request.keep_alive:
                return


async def _read_request(reader: BufferedByteReceiveStream) -> _Request:
    """Read one request; raise ``_BadRequest`` for one that cannot be served."""
    try:
        head = await reader.receive_until(b"\r\n\r\n", MAX_HEAD_BYTES)
    except anyio.DelimiterNotFound:
        raise _BadRequest(431, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505, "unsupported HTTP version")
    headers: _Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        headers.append((name.lower().encode("latin-1"), value.strip().encode("latin-1")))
    fields = {name: value for name, value in headers}
    if b"transfer-encoding" in fields:
        raise _BadRequest(501, "chunked request bodies are not supported")
    lengths = {value for name, value in headers if name == b"content-length"}
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        raise _BadRequest(400, "bad Content-Length")
    length = int(lengths.pop()) if lengths else 0
    if length > MAX_BODY_BYTES:
        raise _BadRequest(413, "request body too large")
    body = await reader.receive_exactly(length) if length else b""
    tokens = {t.strip().lower() for t in fields.get(b"connection", b"").split(b",")}
    keep_alive = b"close" not in tokens if version == "HTTP/1.1" else b"keep-alive" in tokens
    return _Request(method, target, version[5:], headers, body, keep_alive)


async def _call_app(
    app: ASGIApp,
    request: _Request,
    server: tuple[str, int],
    client: tuple[str, int] | None,
) -> tuple[int, _Headers, bytes]:
    """Run the app on one request; return status, headers and the whole body."""
    raw_path, _, query = request.target.partition("?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version,
        "method": request.method,
        "scheme": "http",
        "path": urllib.parse.unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": request.headers,
        "client": client,
        "server": server,
    }
    body_sent = False
    finished = anyio.Event()
    status: int | None = None
    headers: _Headers = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body" and not finished.is_set():
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                finished.set()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    if status is None:
        return 500, [(b"content-type", b"text/plain")], b"No response"
    return status, headers, b"".join(chunks)


def _render(
    status: int, headers: _Headers, body: bytes, keep_alive: bool, head_only: bool
) -> bytes:
    """The bytes of one response, framed by ``Content-Length``."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    skip = {b"content-length", b"connection", b"transfer-encoding"}
    lines = [f"HTTP/1.1 {status} {reason}".encode("latin-1")]
    lines += [name + b": " + value for name, value in headers if name.lower() not in skip]
    lines.append(b"content-length: " + str(len(body)).encode("ascii"))
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)


async def _send_error(stream: anyio.abc.SocketStream, status: int, message: str) -> None:
    """Answer a request that could not be read, then the caller closes."""
    body = message.encode("utf-8")
    data = _render(status, [(b"content-type", b"text/plain")], body, False, False)
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(data)
