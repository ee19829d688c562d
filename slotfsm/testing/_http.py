"""A minimal HTTP/1.1 server for an ASGI app, on a loopback socket, with anyio and h11.

It runs in the caller's event loop (asyncio or trio) and on the caller's
clock, which is the point: the served app and the test share one world.
``h11`` parses requests and writes responses; this module owns only the
connection loop around it: one task per connection, keep-alive, limits on
the request head (64 KiB: 431) and body (1 MiB: 413), and HTTP/1.0 and 1.1
only (505 otherwise).  Every response carries ``Content-Length``.

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
import h11
import httpx

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

_READ_CHUNK = 16 * 1024
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
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    async with stream:
        while True:
            try:
                request = await _read_request(conn, stream)
            except _BadRequest as exc:
                await _send_error(stream, conn, exc.status, exc.message)
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if request is None:
                return  # the client closed the connection
            try:
                status, headers, body = await _call_app(app, request, (host, port), peer)
            except ConnectionDropped:
                return  # leaving closes the connection: no answer at all
            except Exception:
                # Like httpx's ASGI transport: answer 500, then let the bug surface.
                await _send_error(stream, conn, 500, "Internal Server Error")
                raise
            if request.method == "HEAD":
                body = b""
            try:
                await _send(stream, conn, status, headers, body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # h11 decided the connection closes (HTTP/1.0, Connection: close)
            conn.start_next_cycle()


async def _next_event(conn: h11.Connection, stream: anyio.abc.SocketStream) -> Any:
    """The next h11 event of the request, reading as needed."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _BadRequest(exc.error_status_hint, str(exc)) from None
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive(_READ_CHUNK)
        except anyio.EndOfStream:
            data = b""
        conn.receive_data(data)


async def _read_request(conn: h11.Connection, stream: anyio.abc.SocketStream) -> _Request | None:
    """Read one request (``None`` if the client closed); ``_BadRequest`` if unservable."""
    event = await _next_event(conn, stream)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise _BadRequest(400, "expected a request")
    if event.http_version not in (b"1.0", b"1.1"):
        raise _BadRequest(505, "unsupported HTTP version")
    # h11 bounds a head still incomplete; a complete one is bounded here.
    head = (
        len(event.method) + len(event.target) + sum(4 + len(n) + len(v) for n, v in event.headers)
    )
    if head > MAX_HEAD_BYTES:
        raise _BadRequest(431, "request head too large")
    length = dict(event.headers).get(b"content-length")
    if length is not None and int(length) > MAX_BODY_BYTES:
        raise _BadRequest(413, "request body too large")
    body = bytearray()
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY_BYTES:
                raise _BadRequest(413, "request body too large")
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            return None  # the connection closed mid-body
    headers = [(bytes(name), bytes(value)) for name, value in event.headers]
    return _Request(
        event.method.decode("ascii"),
        event.target.decode("latin-1"),
        event.http_version.decode("ascii"),
        headers,
        bytes(body),
    )


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


async def _send(
    stream: anyio.abc.SocketStream,
    conn: h11.Connection,
    status: int,
    headers: _Headers,
    body: bytes,
    *,
    close: bool = False,
) -> None:
    """Write one response, framed by ``Content-Length`` (and ``Connection: close``)."""
    try:
        reason = http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        reason = b"Unknown"
    skip = {b"content-length", b"connection", b"transfer-encoding"}
    fields = [(name, value) for name, value in headers if name.lower() not in skip]
    fields.append((b"content-length", str(len(body)).encode("ascii")))
    if close:
        fields.append((b"connection", b"close"))
    data = conn.send(h11.Response(status_code=status, headers=fields, reason=reason)) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send(data)


async def _send_error(
    stream: anyio.abc.SocketStream, conn: h11.Connection, status: int, message: str
) -> None:
    """Answer a request that could not be served; the caller then closes."""
    headers = [(b"content-type", b"text/plain")]
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, h11.LocalProtocolError):
        await _send(stream, conn, status, headers, message.encode("utf-8"), close=True)
