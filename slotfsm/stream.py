"""Fan-out of slot transitions to any number of subscribers.

A subscriber that reads slowly never slows the actors down: each has a
bounded buffer, and when it is full the oldest record is dropped and counted
in :attr:`TransitionStream.dropped`.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

import anyio

from slotfsm.errors import ConfigError
from slotfsm.snapshot import SlotTransition

__all__ = ["TransitionHub", "TransitionStream"]


class TransitionStream:
    """An async iterator over transitions, from the moment it was opened.

    Use it as ``async with ctl.transitions() as stream: async for t in stream``.
    The iteration ends when the stream or the controller is closed.
    """

    def __init__(self, hub: TransitionHub, buffer: int) -> None:
        if buffer < 1:
            raise ConfigError(f"transition buffer must be >= 1, got {buffer}")
        self._hub = hub
        self._queue: deque[SlotTransition] = deque(maxlen=buffer)
        self._wakeup = anyio.Event()
        self._closed = False
        self.dropped = 0
        """How many records were dropped because this subscriber fell behind."""

    def _push(self, record: SlotTransition) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(record)
        self._wakeup.set()

    def close(self) -> None:
        """Stop receiving; a pending ``__anext__`` ends the iteration."""
        if not self._closed:
            self._closed = True
            self._hub.unsubscribe(self)
            self._wakeup.set()

    def __aiter__(self) -> TransitionStream:
        return self

    async def __anext__(self) -> SlotTransition:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
        return self._queue.popleft()

    async def __aenter__(self) -> TransitionStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TransitionHub:
    """Publishes every transition to every open stream, without ever waiting."""

    def __init__(self) -> None:
        self._streams: set[TransitionStream] = set()

    def subscribe(self, buffer: int = 256) -> TransitionStream:
        """Open a stream that buffers at most ``buffer`` unread records."""
        stream = TransitionStream(self, buffer)
        self._streams.add(stream)
        return stream

    def unsubscribe(self, stream: TransitionStream) -> None:
        """Stop handing records to ``stream``."""
        self._streams.discard(stream)

    def publish(self, record: SlotTransition) -> None:
        """Hand ``record`` to every subscriber (synchronous, never blocks)."""
        for stream in self._streams:
            stream._push(record)

    def close(self) -> None:
        """End every open stream."""
        for stream in list(self._streams):
            stream.close()
