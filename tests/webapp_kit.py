"""What the web app's tests need besides fixtures: streaming in process, a chat fake, a proxy.

* :class:`StreamingTransport` calls an ASGI app in process like httpx's
  ``ASGITransport``, but hands the response over as it is sent (httpx's waits
  for the whole body, which an event stream never finishes), and tells the app
  when the client closes the response.
* :class:`ChatFake` is the fake Lemonade plus a streamed chat completion that
  waits, after its first chunk, until the test lets it go on.
* :func:`sse_events` reads Server-Sent Events from a streamed response.
* :class:`CuttableProxy` is a loopback TCP proxy the browser test can cut and hold,
  to make a browser's event stream reconnect at a moment of the test's choosing.
* :func:`serve_app` runs an ASGI app under uvicorn in the test's own event loop.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import httpx
import uvicorn
from anyio.streams.memory import MemoryObjectReceiveStream

from slotfsm.testing import FakeLemonade

Message = dict[str, Any]


class StreamingTransport(httpx.AsyncBaseTransport):
    """Calls ``app`` in a task of ``group`` and streams its answer back as it comes."""

    def __init__(self, app: Any, group: anyio.abc.TaskGroup) -> None:
        self.app = app
        self.group = group

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(name.lower(), value) for name, value in request.headers.raw],
            "client": ("127.0.0.1", 50000),
            "server": (request.url.host, request.url.port or 80),
        }
        to_client, from_app = anyio.create_memory_object_stream[Message](math.inf)
        gone = anyio.Event()
        requested = False

        async def receive() -> Message:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            with suppress(anyio.BrokenResourceError):  # the client closed: ASGI 2.3 drops it
                await to_client.send(message)

        async def run() -> None:
            async with to_client:
                await self.app(scope, receive, send)

        self.group.start_soon(run)
        start = await from_app.receive()
        assert start["type"] == "http.response.start", start
        return httpx.Response(
            start["status"], headers=start.get("headers", []), stream=_Body(from_app, gone)
        )


class _Body(httpx.AsyncByteStream):
    def __init__(self, messages: MemoryObjectReceiveStream[Message], gone: anyio.Event) -> None:
        self.messages = messages
        self.gone = gone

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for message in self.messages:
            yield bytes(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def aclose(self) -> None:
        self.gone.set()
        await self.messages.aclose()


class ChatFake:
    """``FakeLemonade`` that also answers ``POST /api/v1/chat/completions``, streamed.

    The answer is an event stream of ``chunks``; after the first it waits for
    :attr:`go`.  :attr:`bodies` holds every chat request body received.
    """

    def __init__(self, fake: FakeLemonade, chunks: tuple[str, ...] = ("Hel", "lo")) -> None:
        self.fake = fake
        self.chunks = chunks
        self.go = anyio.Event()
        self.bodies: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/api/v1/chat/completions":
            await self.fake(scope, receive, send)
            return
        request = await receive()
        self.bodies.append(json.loads(request["body"]))
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, text in enumerate(self.chunks):
            delta = {"choices": [{"delta": {"content": text}}]}
            chunk = f"data: {json.dumps(delta)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if index == 0:
                await self.go.wait()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The events of a Server-Sent Events response, each as its fields (comments skipped)."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[field] = f"{event[field]}\n{value}" if field in event else value


class CuttableProxy:
    """A loopback TCP proxy to ``port`` that the test can cut, hold and resume.

    :meth:`cut` closes every open connection and holds the new ones (accepted,
    but relayed nowhere) until :meth:`resume`.  :attr:`heads` keeps the first
    bytes each client sent, so a test can read the requests' headers.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.heads: list[bytes] = []
        self._open = anyio.Event()
        self._open.set()
        self._pipes: set[anyio.CancelScope] = set()
        self.url = ""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CuttableProxy]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}/"
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, self._relay)
            try:
                yield self
            finally:
                group.cancel_scope.cancel()

    def cut(self) -> None:
        self._open = anyio.Event()
        for scope in self._pipes:
            scope.cancel()

    def resume(self) -> None:
        self._open.set()

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            await self._open.wait()
            with anyio.CancelScope() as scope:
                self._pipes.add(scope)
                async with (
                    await anyio.connect_tcp("127.0.0.1", self.port) as server,
                    anyio.create_task_group() as group,
                ):
                    group.start_soon(self._pipe, server, client, False)
                    await self._pipe(client, server, True)
            self._pipes.discard(scope)

    async def _pipe(
        self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, request: bool
    ) -> None:
        first = request
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            async for chunk in source:
                if first:
                    self.heads.append(chunk)
                    first = False
                await sink.send(chunk)
        with suppress(OSError, anyio.BrokenResourceError):
            await sink.send_eof()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` under uvicorn on a free loopback port (asyncio only); yields its URL.

    The app's lifespan has run its start-up when this yields, and its shut-down
    when this returns.
    """
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [listening])
        await server.ready.wait()
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.state.end_event_streams()
            server.should_exit = True
