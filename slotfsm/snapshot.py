"""What a slot looks like from outside: snapshots, transition records and their JSON views.

Times are kept on slotfsm's monotonic clock (``anyio.current_time()``), the
one clock every decision uses; each value also carries the wall-clock time it
stands for, converted once when it was made, for people and browsers.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from slotfsm.errors import Failure, FailureError
from slotfsm.states import SlotState

__all__ = ["Gap", "SlotSnapshot", "SlotTransition", "iso"]


def iso(wall: float | None) -> str | None:
    """``wall`` (seconds since the epoch) as an ISO-8601 UTC string, or ``None``."""
    if wall is None:
        return None
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="milliseconds")


@attrs.frozen
class SlotTransition:
    """One change of a slot, as published by ``Controller.transitions()``.

    ``id`` increases by one per record of a controller (a reader can resume
    after the last id it saw).  ``at`` is on slotfsm's monotonic clock and
    ``wall_at`` the same moment in seconds since the epoch.  ``reason`` says
    why in words (the guard that held, or the failure).  Besides changes of
    state, the stream carries use (trigger ``use``: ``in_use`` entered or
    left), clean-ups the ledger did for the slot (``cleanup``) and run-time
    changes (``slot_added``, ``slot_removed``, ``reconfigured``, and
    ``registry_replaced`` with an empty ``slot``).
    """

    slot: str
    source: SlotState
    dest: SlotState
    trigger: str
    at: float
    model: str | None = None
    failure: Failure | None = None
    reason: str = ""
    id: int = 0
    wall_at: float | None = None

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.slot}: {self.source} -> {self.dest} on {self.trigger}{why}"

    def to_dict(self) -> dict[str, Any]:
        """The record in plain JSON types (field names are stable; see the README)."""
        return {
            "id": self.id,
            "slot": self.slot,
            "source": self.source.value,
            "dest": self.dest.value,
            "trigger": self.trigger,
            "at": iso(self.wall_at),
            "monotonic": self.at,
            "model": self.model,
            "failure": self.failure.to_dict() if self.failure is not None else None,
            "reason": self.reason,
        }


@attrs.frozen
class Gap:
    """Records a reader asked for but can no longer get: ``missed`` of them, after id ``after``."""

    after: int
    missed: int

    def to_dict(self) -> dict[str, Any]:
        """``{"gap": {"after": ..., "missed": ...}}``."""
        return {"gap": {"after": self.after, "missed": self.missed}}


@attrs.frozen
class SlotSnapshot:
    """A slot at one moment: its state, the model it holds, its latest failure.

    After a load, check ``model`` and ``error`` as well as ``state``: a swap
    refused by validation leaves the slot ``LOADED`` with its old ``model`` and
    the validation failure in ``error``.  ``target`` is the model being
    validated or loaded; ``unverified`` is true when ``model`` was loaded
    without a sha256 to check (allowed explicitly); ``checkpoint_confirmed`` is
    true when the server said which file it loads for the name and it is the
    one validated, ``None`` when the server could not tell (a hub model: no
    guess is made).  From the controller's
    ledger: ``leaving`` names the models the slot is unloading (a swap's old
    model stays the slot's until its unload is answered); ``cleanups`` the
    models the slot's work may have left on the server with nobody managing
    them (a load that timed out and may still arrive, an answer that was lost)
    — they are unloaded when they show up, no ``reset`` forgets them, and no
    other slot can load them meanwhile.  ``in_use`` counts callers inside
    ``Controller.in_use``; ``history`` holds the slot's most recent
    transitions, oldest first.  ``since`` is when it entered its state
    (monotonic; ``wall_since`` in seconds since the epoch).
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
    unverified: bool = False
    wall_since: float | None = None
    checkpoint_confirmed: bool | None = None

    @property
    def stray(self) -> str | None:
        """The first of :attr:`cleanups`, or ``None``."""
        return self.cleanups[0] if self.cleanups else None

    def raise_for_failure(self) -> SlotSnapshot:
        """Raise :class:`~slotfsm.errors.FailureError` if the slot reports a failure.

        Like httpx's ``raise_for_status``: returns the snapshot itself when
        ``error`` is ``None``, so ``(await ctl.load(...)).raise_for_failure()``
        reads well.
        """
        if self.error is not None:
            raise FailureError(self.error)
        return self

    def to_dict(self, *, history: bool = False) -> dict[str, Any]:
        """The snapshot in plain JSON types (field names are stable; see the README)."""
        view: dict[str, Any] = {
            "slot": self.slot,
            "state": self.state.value,
            "model": self.model,
            "error": self.error.to_dict() if self.error is not None else None,
            "target": self.target,
            "leaving": list(self.leaving),
            "cleanups": list(self.cleanups),
            "since": iso(self.wall_since),
            "since_monotonic": self.since,
            "in_use": self.in_use,
            "unverified": self.unverified,
            "checkpoint_confirmed": self.checkpoint_confirmed,
        }
        if history:
            view["history"] = [t.to_dict() for t in self.history]
        return view
