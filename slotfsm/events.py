"""The values that flow through a slot: events in, effects out.

Events are what a slot's actor feeds to the rulebook: commands from callers
(:class:`Load`, :class:`Unload`, :class:`Reset`), results of work the slot
started (:class:`Validated`, :class:`LoadSucceeded`, ...) and observations of
the server (:class:`Observed`).  Effects are what a transition asks the actor
to do (:class:`StartValidation`, :class:`CallLoad`, :class:`CallUnload`).
All are frozen attrs values; none of them does anything by itself.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import attrs

from slotfsm.errors import Failure

if TYPE_CHECKING:
    from slotfsm.lemonade import Health
    from slotfsm.registry import ModelEntry

__all__ = [
    "CallLoad",
    "CallUnload",
    "Cancel",
    "Effect",
    "Event",
    "Load",
    "LoadFailed",
    "LoadSucceeded",
    "LoadTimedOut",
    "Observed",
    "Reset",
    "StartValidation",
    "Trigger",
    "Unload",
    "UnloadFailed",
    "Unloaded",
    "UseChanged",
    "Validated",
]


class Trigger(enum.StrEnum):
    """The name under which each event enters the state machine."""

    LOAD = "load"
    UNLOAD = "unload"
    RESET = "reset"
    VALIDATED = "validated"
    LOAD_SUCCEEDED = "load_succeeded"
    LOAD_FAILED = "load_failed"
    LOAD_TIMEOUT = "load_timeout"
    UNLOADED = "unloaded"
    UNLOAD_FAILED = "unload_failed"
    OBSERVED = "observed"
    USE = "use"
    CANCEL = "cancel"

    @property
    def is_command(self) -> bool:
        """True for the triggers a caller sends (load, unload, reset)."""
        return self in _COMMANDS


_COMMANDS = frozenset({Trigger.LOAD, Trigger.UNLOAD, Trigger.RESET})


# -- commands -------------------------------------------------------------


@attrs.frozen
class Load:
    """Put ``entry`` in the slot (validated first; ADR-0007 §1)."""

    trigger: ClassVar[Trigger] = Trigger.LOAD
    entry: ModelEntry


@attrs.frozen
class Unload:
    """Empty the slot."""

    trigger: ClassVar[Trigger] = Trigger.UNLOAD


@attrs.frozen
class Cancel:
    """Stop what the slot is doing now (validation, or a load the slot waits for).

    Not a queued command: it acts on the busy state at once, and the commands
    queued behind it still run.  ``kept`` is filled in by the slot's actor: the
    old model of a swap whose unload was not sent yet (the slot still holds it).
    """

    trigger: ClassVar[Trigger] = Trigger.CANCEL
    kept: str | None = None


@attrs.frozen
class Reset:
    """Leave ``error`` for ``idle`` without touching the server."""

    trigger: ClassVar[Trigger] = Trigger.RESET


# -- results of the slot's own work -------------------------------------------


@attrs.frozen
class Validated:
    """Pre-load validation finished: ``failure`` is ``None`` on a pass."""

    trigger: ClassVar[Trigger] = Trigger.VALIDATED
    entry: ModelEntry
    failure: Failure | None


@attrs.frozen
class LoadSucceeded:
    """``/load`` answered 200 for ``model``.

    ``seq`` orders it against observations: an observation whose ``/health``
    request was sent before this answer arrived cannot prove the model gone.
    """

    trigger: ClassVar[Trigger] = Trigger.LOAD_SUCCEEDED
    model: str
    at: float
    seq: int = 0
    confirmed: bool | None = None
    """The server's file for the name is the one validated (``None``: it cannot tell)."""
    warning: Failure | None = None
    """Loaded, but something is off (the server reports loading a different file)."""


@attrs.frozen
class LoadFailed:
    """``/load`` failed or could not be sent, or the swap's unload before it failed.

    ``kept`` names the slot's old model when the swap stopped before the new
    load because unloading the old one failed: the slot still holds it.
    """

    trigger: ClassVar[Trigger] = Trigger.LOAD_FAILED
    failure: Failure
    kept: str | None = None


@attrs.frozen
class LoadTimedOut:
    """The ``loading`` state timer fired before the load finished (ADR-0007 §3).

    ``kept`` names the old model of a swap whose unload was not sent yet: the
    slot still holds it.
    """

    trigger: ClassVar[Trigger] = Trigger.LOAD_TIMEOUT
    failure: Failure
    kept: str | None = None


@attrs.frozen
class Unloaded:
    """``/unload`` of ``model`` succeeded; ``was_loaded`` is false if the server did not hold it."""

    trigger: ClassVar[Trigger] = Trigger.UNLOADED
    model: str
    was_loaded: bool = True


@attrs.frozen
class UnloadFailed:
    """``/unload`` failed (or could not be sent), at ``at`` on slotfsm's clock."""

    trigger: ClassVar[Trigger] = Trigger.UNLOAD_FAILED
    failure: Failure
    at: float = 0.0


# -- observations ---------------------------------------------------------------


@attrs.frozen
class Observed:
    """What ``/health`` said, asked at ``at`` on slotfsm's own monotonic clock.

    ``seq`` is the controller's sequence number taken when the request was sent.
    """

    trigger: ClassVar[Trigger] = Trigger.OBSERVED
    health: Health
    at: float
    seq: int = 0
    cause: str = ""
    """Why a model may be missing from this reading, when slotfsm can tell: the
    re-read after a load of ours names that load; a periodic poll says so."""


@attrs.frozen
class UseChanged:
    """A caller started (``+1``) or finished (``-1``) using the slot's model."""

    trigger: ClassVar[Trigger] = Trigger.USE
    delta: int
    at: float


Event: TypeAlias = (
    Load
    | Unload
    | Reset
    | Cancel
    | Validated
    | LoadSucceeded
    | LoadFailed
    | LoadTimedOut
    | Unloaded
    | UnloadFailed
    | Observed
    | UseChanged
)


# -- effects ----------------------------------------------------------------------


@attrs.frozen
class StartValidation:
    """Validate ``entry`` on disk before the server hears of it (ADR-0007 §1)."""

    entry: ModelEntry


@attrs.frozen
class CallLoad:
    """Send ``/load`` for ``entry``, bounded by the slot's load timeout (ADR-0007 §3).

    ``replaces`` names a different model the slot holds: it is unloaded first,
    so the server never holds both on this slot's behalf.
    """

    entry: ModelEntry
    replaces: str | None = None


@attrs.frozen
class CallUnload:
    """Send ``/unload`` with this (never empty) model name."""

    model: str


Effect: TypeAlias = StartValidation | CallLoad | CallUnload
