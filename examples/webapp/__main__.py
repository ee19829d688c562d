"""``python -m examples.webapp``: the reference web app against the built-in fake Lemonade.

Writes a few small model files to a temporary directory (one with a wrong
sha256, one whose load takes a few seconds so that it can be cancelled),
serves slotfsm's fake Lemonade Server on a free loopback port, and serves the
app on ``--host``/``--port`` (127.0.0.1:8000; port 0 picks a free one),
printing its URL.  Ctrl+C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import tempfile
from collections.abc import Callable
from types import FrameType

import anyio
import httpx
import uvicorn

from examples.webapp.app import create_app
from slotfsm import Controller, Registry, SlotConfig
from slotfsm.testing import FakeLemonade, FakeModel
from slotfsm.testing.files import Flaw, write_model

SLOW_LOAD = 5.0
"""Seconds the fake takes to load ``slow-model``: time enough to press cancel."""


async def serve(host: str, port: int) -> None:
    """Run the demo until interrupted."""
    with tempfile.TemporaryDirectory(prefix="slotfsm-web-") as directory:
        entries = [
            write_model(directory, "chat-model", size=64 * 1024),
            write_model(directory, "code-model", size=64 * 1024),
            write_model(directory, "slow-model"),
            write_model(directory, "corrupt-model", flaw=Flaw.SHA256),
        ]
        fake = FakeLemonade(
            [FakeModel.for_file(e.name, e.path) for e in entries], max_models={"llm": -1}
        )
        fake.delaying("slow-model", SLOW_LOAD)
        async with fake.serve() as lemonade_url:
            ctl = Controller(
                lemonade_url=lemonade_url,
                registry=Registry(entries),
                slots=[SlotConfig("chat", idle_timeout=120), SlotConfig("code", idle_timeout=120)],
                poll_interval=2.0,
            )
            upstream = httpx.AsyncClient(
                base_url=lemonade_url, timeout=httpx.Timeout(10.0, read=600.0)
            )
            app = create_app(ctl, upstream)
            listening = socket.create_server((host, port))
            address = listening.getsockname()
            print(
                f"slotfsm web demo on http://{address[0]}:{address[1]}/"
                f" (fake Lemonade on {lemonade_url}); Ctrl+C stops it",
                flush=True,
            )
            config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
            await _Server(config, app.state.end_event_streams).serve(sockets=[listening])


class _Server(uvicorn.Server):
    """Uvicorn, ending the open event streams when asked to stop (it waits for open responses)."""

    def __init__(self, config: uvicorn.Config, end_streams: Callable[[], None]) -> None:
        super().__init__(config)
        self._end_streams = end_streams
        self._loop = asyncio.get_running_loop()  # uvicorn runs on asyncio only

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._loop.call_soon_threadsafe(self._end_streams)  # a signal handler: not in the loop
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.webapp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    # uvicorn runs on asyncio; once stopped, it raises the Ctrl+C it caught again.
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve, args.host, args.port, backend="asyncio")


if __name__ == "__main__":
    main()
