"""What a slot looks like from outside: snapshots and transition records."""

from __future__ import annotations

import attrs

from slotfsm.errors import Failure
from slotfsm.states import SlotState

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
    validated or loaded.  From the controller's ledger: ``leaving`` names the
    models the slot is unloading (a swap's old model stays the slot's until
    its unload is answered); ``cleanups`` the models the slot's work may have
    left on the server with nobody managing them (a load that timed out and
    may still arrive, an answer that was lost) — they are unloaded when they
    show up, no ``reset`` forgets them, and no other slot can load them
    meanwhile.  ``in_use`` counts callers inside ``Controller.in_use``;
    ``history`` holds the slot's most recent transitions, oldest first.
    """

    slot: str
    state: SlotState
    model: str | None = None
    error: Failure | None = None
    target: str | None = None
    leaving: tuple[str, ...] = ()
    cleanups: tuple[str, ...] = ()
    since: float = 0.0
    in_use: int = 0
    history: tuple[SlotTransition, ...] = ()

    @property
    def stray(self) -> str | None:
        """The first of :attr:`cleanups`, or ``None``."""
        return self.cleanups[0] if self.cleanups else None
