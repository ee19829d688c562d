"""What a slot looks like from outside: snapshots and transition records."""

from __future__ import annotations

import attrs

from slotfsm.errors import Failure
from slotfsm.rules import SlotState

__all__ = ["SlotSnapshot", "SlotTransition"]


@attrs.frozen
class SlotTransition:
    """One change of a slot's state, as published by ``Controller.transitions()``.

    ``at`` is on slotfsm's monotonic clock (``anyio.current_time()``).
    ``reason`` says why in words (the guard that held, or the failure).
    """

    slot: str
    source: SlotState
    dest: SlotState
    trigger: str
    at: float
    model: str | None = None
    failure: Failure | None = None
    reason: str = ""

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.slot}: {self.source} -> {self.dest} on {self.trigger}{why}"


@attrs.frozen
class SlotSnapshot:
    """A slot at one moment: its state, the model it holds, its latest failure.

    After a load, check ``model`` and ``error`` as well as ``state``: a swap
    refused by validation leaves the slot ``LOADED`` with its old ``model`` and
    the validation failure in ``error``.  ``target`` is the model being
    validated or loaded; ``stray`` a model the server may hold on the slot's
    behalf that it does not manage (a load that timed out, an unload that
    failed: it is unloaded when seen, by ``unload``, or forgotten by ``reset``);
    ``in_use`` counts callers inside ``Controller.in_use``; ``history`` holds the
    slot's most recent transitions, oldest first.
    """

    slot: str
    state: SlotState
    model: str | None = None
    error: Failure | None = None
    target: str | None = None
    stray: str | None = None
    since: float = 0.0
    in_use: int = 0
    history: tuple[SlotTransition, ...] = ()
