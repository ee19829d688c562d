"""The idle watcher: one ``/health`` poll per interval, told to every slot.

Lemonade before v10.8 has no idle unload, and its ``last_use`` is milliseconds
on its own monotonic clock, not a time.  The watcher therefore only *observes*:
each poll becomes one :class:`~slotfsm.events.Observed` event for every slot,
and each slot's actor decides, through the rulebook's ``idle_expired`` and
``model_gone`` guards, whether to unload or to report an eviction (ADR-0007 §2).
The watcher never changes a slot itself.

A flaky server costs nothing but a warning: an unreachable server, a timeout,
a 5xx or a body that is not the promised JSON is logged and the next poll
goes on.  A malformed body is never told to any slot, so it can never unload
anything.  Polls never overlap, and post-load re-reads take turns with them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import anyio
import attrs
from anyio.abc import TaskStatus

from slotfsm.config import positive_seconds
from slotfsm.events import Observed
from slotfsm.lemonade import Health, LemonadeClient, LemonadeError

__all__ = ["IdleWatcher", "Reading"]

logger = logging.getLogger("slotfsm")


@attrs.frozen
class Reading:
    """One ``/health`` reading: the server's answer and when it was asked.

    ``at`` is on slotfsm's monotonic clock, ``wall_at`` the same moment in
    seconds since the epoch; ``seq`` orders it against load answers.
    """

    health: Health
    at: float
    seq: int
    wall_at: float

    def to_dict(self) -> dict[str, object]:
        """The reading in plain JSON types: when, and the rows as the server sent them."""
        from slotfsm.snapshot import iso

        rows = [dict(getattr(m, "raw", None) or {"model_name": m.name}) for m in self.health.models]
        return {"at": iso(self.wall_at), "monotonic": self.at, "rows": rows}


class IdleWatcher:
    """Reads ``/health`` every ``interval`` seconds and hands it to ``deliver``.

    ``deliver`` returns once every slot has handled the observation.
    ``sequence`` numbers each request as it is sent, so that a slot can tell an
    observation older than its own load's answer.
    """

    def __init__(
        self,
        client: LemonadeClient,
        deliver: Callable[[Observed], Awaitable[int]],
        sequence: Callable[[], int],
        interval: float = 30.0,
    ) -> None:
        self.interval = positive_seconds("poll_interval", interval)
        self._client = client
        self._deliver = deliver
        self._sequence = sequence
        self._lock = anyio.Lock(fast_acquire=True)  # no scheduling round trip when free
        self._delivered = 0  # sequence number of the latest reading every slot has handled
        self.polls = 0
        """How many ``/health`` requests were sent (periodic and post-load)."""
        self.failures = 0
        """How many of them gave nothing usable."""
        self.told = 0
        """How many deliveries to slots the readings made (a slot a reading cannot change
        is not told)."""
        self.last: Reading | None = None
        """The latest usable reading."""
        self.wall_offset = 0.0

    async def observe(self, *, newer_than: int | None = None, cause: str = "") -> Health | None:
        """Read ``/health`` once and tell every slot; returns the reading.

        Returns ``None`` when the read failed.  With ``newer_than``, a reading
        already sent after that sequence number and handled by every slot is
        enough: no new request is made, and ``None`` is returned.  ``cause``
        says what an eviction this reading reveals is most likely due to.
        """
        async with self._lock:
            if newer_than is not None and self._delivered > newer_than:
                return None
            seq = self._sequence()
            at = anyio.current_time()
            self.polls += 1
            try:
                health = await self._client.health()
            except LemonadeError as exc:
                self.failures += 1
                logger.warning("health poll failed, trying again next interval: %s", exc)
                return None
            self.last = Reading(health, at, seq, at + self.wall_offset)
            self.told += await self._deliver(Observed(health, at, seq, cause))
            self._delivered = seq
            return health

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Poll at once, then every ``interval``; a slow poll skips the ticks it overran."""
        task_status.started()
        next_poll = anyio.current_time()
        while True:
            await self.observe()
            next_poll += self.interval
            now = anyio.current_time()
            if next_poll <= now:
                next_poll += math.ceil((now - next_poll) / self.interval) * self.interval
            await anyio.sleep(next_poll - now)
