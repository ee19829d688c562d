"""Fan-out of slot transitions to any number of subscribers, with a replay ring.

Every record gets an id, increasing by one per controller.  The hub keeps the
latest records in a bounded ring, so a reader that reconnects (a browser's
Server-Sent Events ``Last-Event-ID``) can ask for everything after the last id
it saw: ``ctl.transitions(since=id)`` replays what the ring still holds, then
follows live.  What has left the ring is never skipped silently: such a
stream yields a :class:`~slotfsm.snapshot.Gap` with the count first.

A subscriber that reads slowly never slows the actors down: each has a
bounded buffer, and when it is full the oldest record is dropped — counted in
:attr:`TransitionStream.dropped`, and for a stream opened with ``since``
announced by a ``Gap`` where the records went missing.
"""

from __future__ import annotations

import itertools
from collections import deque
from types import TracebackType
from typing import Generic, TypeVar

import anyio

from slotfsm.errors import ConfigError
from slotfsm.snapshot import Gap, SlotTransition

__all__ = ["TransitionHub", "TransitionStream"]

Item = TypeVar("Item", SlotTransition, SlotTransition | Gap)


class TransitionStream(Generic[Item]):
    """An async iterator over transitions, from the moment it was opened (or ``since``).

    Use it as ``async with ctl.transitions() as stream: async for t in stream``.
    The iteration ends when the stream or the controller is closed.  Items are
    :class:`SlotTransition` records, and :class:`Gap` markers when the stream
    was opened with ``since``.
    """

    def __init__(self, hub: TransitionHub, buffer: int, *, gaps: bool = False) -> None:
        if buffer < 1:
            raise ConfigError(f"transition buffer must be >= 1, got {buffer}")
        self._hub = hub
        self._queue: deque[SlotTransition | Gap] = deque()
        self._buffer = buffer
        self._gaps = gaps
        self._missed = 0
        self._after = 0
        self._wakeup = anyio.Event()
        self._closed = False
        self.dropped = 0
        """How many records were dropped because this subscriber fell behind."""

    def _push(self, item: SlotTransition | Gap) -> None:
        if len(self._queue) >= self._buffer:
            lost = self._queue.popleft()
            if isinstance(lost, SlotTransition):
                if not self._missed:
                    self._after = lost.id - 1
                self.dropped += 1
                self._missed += 1
        self._queue.append(item)
        self._wakeup.set()

    def close(self) -> None:
        """Stop receiving; a pending ``__anext__`` ends the iteration."""
        if not self._closed:
            self._closed = True
            self._hub.unsubscribe(self)
            self._wakeup.set()

    def __aiter__(self) -> TransitionStream[Item]:
        return self

    async def __anext__(self) -> Item:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
        if self._missed and self._gaps:
            gap = Gap(after=self._after, missed=self._missed)
            self._missed = 0
            return gap  # type: ignore[return-value]  # only streams typed with Gap have gaps
        self._missed = 0
        return self._queue.popleft()  # type: ignore[return-value]

    async def __aenter__(self) -> TransitionStream[Item]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TransitionHub:
    """Numbers every record, keeps the latest ``ring`` of them, and hands each to every stream."""

    def __init__(self, ring: int = 1024) -> None:
        if ring < 1:
            raise ConfigError(f"transition ring must be >= 1, got {ring}")
        self._streams: set[
            TransitionStream[SlotTransition] | TransitionStream[SlotTransition | Gap]
        ] = set()
        self._ring: deque[SlotTransition] = deque(maxlen=ring)
        self.next_id = itertools.count(1).__next__
        """The id for the next record (called once per record, when it is made)."""

    def subscribe(self, buffer: int = 256) -> TransitionStream[SlotTransition]:
        """Open a stream of what happens from now on, buffering at most ``buffer`` unread."""
        stream: TransitionStream[SlotTransition] = TransitionStream(self, buffer)
        self._streams.add(stream)
        return stream

    def replay(self, since: int, buffer: int = 256) -> TransitionStream[SlotTransition | Gap]:
        """Open a stream of the records after id ``since`` still in the ring, then live ones.

        Records that have left the ring are announced by a :class:`Gap` first.
        """
        stream: TransitionStream[SlotTransition | Gap] = TransitionStream(
            self, max(buffer, len(self._ring) + 1), gaps=True
        )
        oldest = self._ring[0].id if self._ring else None
        if oldest is not None and since < oldest - 1:
            stream._push(Gap(after=since, missed=oldest - 1 - since))
        for record in self._ring:
            if record.id > since:
                stream._push(record)
        self._streams.add(stream)
        return stream

    def unsubscribe(
        self, stream: TransitionStream[SlotTransition] | TransitionStream[SlotTransition | Gap]
    ) -> None:
        """Stop handing records to ``stream``."""
        self._streams.discard(stream)

    def publish(self, record: SlotTransition) -> None:
        """Keep ``record`` in the ring and hand it to every subscriber (never blocks)."""
        self._ring.append(record)
        for stream in self._streams:
            stream._push(record)

    def close(self) -> None:
        """End every open stream."""
        for stream in list(self._streams):
            stream.close()
