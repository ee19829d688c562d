"""The reference web app: one controller behind a small HTTP API, an event stream and a page.

``create_app(ctl, upstream)`` returns a Starlette application whose lifespan
runs ``ctl`` (and the metrics collector beside it).  ``upstream`` is an
``httpx.AsyncClient`` for the same Lemonade Server (its ``base_url``, and its
API key in its headers if the server wants one): the chat route proxies to it.

Routes: ``GET /`` (the page), ``GET /slots``, ``GET /models``, ``GET /events``
(Server-Sent Events), ``POST /slots/{name}/load`` (``{"model": ...}``),
``.../unload``, ``.../cancel``, ``POST /slots/{name}/chat/completions`` (a chat
completion on the slot's model, proxied to Lemonade while the slot is
``in_use``) and ``GET /metrics``; the README's "Observing" section shows what
each answers.

``last_id`` in ``/slots`` is the id of the latest record the snapshots
reflect: a client that shows the snapshots and then follows
``/events?since=<last_id>`` misses nothing and sees nothing twice.  A failed
load is a state, not an HTTP error: ``load`` answers 200 with the snapshot
(check ``state`` and ``error``).  Misuse answers JSON ``{"error": "..."}``:
404 for an unknown slot or model, 409 for a model another slot holds or a chat
on a slot that holds none, 400 for a malformed request, 502 when Lemonade
cannot be reached by the proxy.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from importlib import resources
from typing import Any

import anyio
import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from examples.webapp.lifecycle import lifecycle_svg
from slotfsm import (
    Controller,
    ControllerClosedError,
    ModelInUseError,
    SlotSnapshot,
    SlotState,
    SlotTransition,
    UnknownModelError,
    UnknownSlotError,
)
from slotfsm.metrics import SlotCollector
from slotfsm.snapshot import Gap
from slotfsm.stream import TransitionStream

__all__ = ["Relay", "create_app"]

CHAT_PATH = "/api/v1/chat/completions"
"""Where Lemonade answers chat completions (OpenAI-compatible)."""
KEEPALIVE = 15.0
"""Seconds of quiet after which the event stream sends a comment (proxies close idle streams)."""
RETRY_MS = 1000
"""How long a browser waits before it reconnects a dropped event stream."""

_STATUS: dict[type[Exception], int] = {
    UnknownSlotError: 404,
    UnknownModelError: 404,
    ModelInUseError: 409,
    ControllerClosedError: 503,
    httpx.TransportError: 502,
}


class Relay(Response):
    """A streamed response that stops when the client leaves and always closes its source.

    ``chunks`` are sent as they come; ``closing`` is closed once the response
    is over, however it ended: finished, the client gone, or the server
    stopping.  (Starlette's own streaming response leaves its iterator to the
    garbage collector when the client goes away.)
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        closing: contextlib.AsyncExitStack,
        *,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._chunks = chunks
        self._closing = closing
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._closing:
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
                    await send(
                        {
                            "type": "http.response.start",
                            "status": self.status_code,
                            "headers": self.raw_headers,
                        }
                    )
                    async for chunk in self._chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    group.cancel_scope.cancel()
            except* OSError:  # the client went away (how ASGI 2.4 servers say so)
                pass


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _sse(item: SlotTransition | Gap) -> bytes:
    if isinstance(item, Gap):
        return f"event: gap\ndata: {json.dumps(item.to_dict())}\n\n".encode()
    return f"id: {item.id}\nevent: transition\ndata: {json.dumps(item.to_dict())}\n\n".encode()


class _Endpoints:
    def __init__(self, ctl: Controller, upstream: httpx.AsyncClient) -> None:
        self.ctl = ctl
        self.upstream = upstream
        self.collector = SlotCollector(ctl)
        self.metrics = CollectorRegistry()
        self.metrics.register(self.collector)
        page = resources.files(__package__).joinpath("index.html").read_text(encoding="utf-8")
        self.page = page.replace("<!-- lifecycle -->", lifecycle_svg())
        self.streams: set[TransitionStream[SlotTransition | Gap]] = set()

    def end_event_streams(self) -> None:
        """End every open event stream (a server about to stop calls it: browsers reconnect)."""
        for stream in list(self.streams):
            stream.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.ctl, self.upstream, self.collector.running():
            yield

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def slots(self, request: Request) -> Response:
        snapshots = self.ctl.snapshots()
        return JSONResponse(
            {"last_id": _last_id(snapshots), "slots": [s.to_dict() for s in snapshots.values()]}
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse({"models": [entry.name for entry in self.ctl.registry]})

    async def events(self, request: Request) -> Response:
        text = request.headers.get("last-event-id") or request.query_params.get("since")
        since = _last_id(self.ctl.snapshots()) if text is None else _record_id(text)
        stream = self.ctl.transitions(since=since)
        self.streams.add(stream)
        closing = contextlib.AsyncExitStack()
        closing.callback(self.streams.discard, stream)
        closing.callback(stream.close)

        async def chunks() -> AsyncGenerator[bytes]:
            yield f"retry: {RETRY_MS}\n\n".encode()
            while True:
                with anyio.move_on_after(KEEPALIVE) as quiet:
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:  # the controller closed
                        return
                if quiet.cancelled_caught:
                    yield b": keepalive\n\n"
                else:
                    yield _sse(item)

        body = chunks()
        closing.push_async_callback(body.aclose)
        return Relay(
            body,
            closing,
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
        )

    async def load(self, request: Request) -> Response:
        model = (await _body(request)).get("model")
        if not isinstance(model, str):
            raise HTTPException(400, 'the body must be {"model": "<registry name>"}')
        snap = await self.ctl.load(request.path_params["name"], model)
        return JSONResponse(snap.to_dict())

    async def unload(self, request: Request) -> Response:
        return JSONResponse((await self.ctl.unload(request.path_params["name"])).to_dict())

    async def cancel(self, request: Request) -> Response:
        return JSONResponse((await self.ctl.cancel(request.path_params["name"])).to_dict())

    async def chat(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await _body(request)
        closing = contextlib.AsyncExitStack()
        try:
            snap = await closing.enter_async_context(self.ctl.in_use(name))
            if snap.state is not SlotState.LOADED or snap.model is None:
                raise HTTPException(409, f"slot {name!r} holds no model (it is {snap.state})")
            upstream = self.upstream.build_request(
                "POST", CHAT_PATH, json={**body, "model": snap.model}
            )
            answer = await self.upstream.send(upstream, stream=True)
            closing.push_async_callback(answer.aclose)
        except BaseException:
            await closing.aclose()
            raise
        headers = {"content-type": answer.headers.get("content-type", "application/json")}
        return Relay(answer.aiter_bytes(), closing, status_code=answer.status_code, headers=headers)

    async def scrape(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics), media_type=CONTENT_TYPE_LATEST)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


def _last_id(snapshots: Mapping[str, SlotSnapshot]) -> int:
    """The id of the latest record the snapshots reflect (0: none yet)."""
    return max((s.history[-1].id for s in snapshots.values() if s.history), default=0)


def _record_id(text: str) -> int:
    if not text.isdigit():
        raise HTTPException(400, f"Last-Event-ID or since must be a record id, got {text!r}")
    return int(text)


async def _error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    return JSONResponse({"error": str(exc)}, status_code=status)


def create_app(ctl: Controller, upstream: httpx.AsyncClient) -> Starlette:
    """The application; its lifespan runs ``ctl`` and closes ``upstream``.

    ``app.state.end_event_streams()`` ends the open event streams; a server
    calls it when asked to stop, since it waits for open responses to end.
    """
    endpoints = _Endpoints(ctl, upstream)
    slot = "/slots/{name}"
    app = Starlette(
        routes=[
            Route("/", endpoints.index),
            Route("/slots", endpoints.slots),
            Route("/models", endpoints.models),
            Route("/events", endpoints.events),
            Route(f"{slot}/load", endpoints.load, methods=["POST"]),
            Route(f"{slot}/unload", endpoints.unload, methods=["POST"]),
            Route(f"{slot}/cancel", endpoints.cancel, methods=["POST"]),
            Route(f"{slot}/chat/completions", endpoints.chat, methods=["POST"]),
            Route("/metrics", endpoints.scrape),
        ],
        exception_handlers=dict.fromkeys([HTTPException, *_STATUS], _error),
        lifespan=endpoints.lifespan,
    )
    app.state.end_event_streams = endpoints.end_event_streams
    return app
