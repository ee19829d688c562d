"""A slot's states and the data it keeps beside its state."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

from slotfsm.errors import Failure

if TYPE_CHECKING:
    from slotfsm.registry import ModelEntry

__all__ = ["SlotData", "SlotState"]


class SlotState(enum.StrEnum):
    """The six states of a slot."""

    IDLE = "idle"
    VALIDATING = "validating"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    ERROR = "error"

    @property
    def settled(self) -> bool:
        """True where a slot rests until told otherwise: idle, loaded, error."""
        return self in _SETTLED


_SETTLED = frozenset({SlotState.IDLE, SlotState.LOADED, SlotState.ERROR})


@attrs.frozen
class SlotData:
    """Everything a slot knows besides its state; replaced whole on each change.

    * ``model``: the model the slot holds on the server; ``target``: the one it
      is validating or loading; ``leaving``: during a swap, the old model whose
      unload comes before the new load; ``error``: the latest failure.
    * ``last_use``/``seen``: the server's opaque ``last_use`` for ``model`` as
      last observed; ``used_at``: when, on slotfsm's own clock, the model last
      showed use (or was loaded); ``loaded_seq``: the sequence number of its
      load's answer; ``gone_seq``: the latest observation, while loading, that
      did not list the target.
    * ``unload_failures``: unloads of ``model`` that failed in a row; the idle
      rule tries again no sooner than ``retry_at`` (a bounded backoff).
    * ``in_use``: callers inside ``Controller.in_use``; ``unverified``: ``model``
      was loaded without a sha256 to check (allowed explicitly);
      ``confirmed``: the server said which file it loads for the name and it is
      the one validated (``None``: the server could not tell, e.g. a hub model).

    What the server may hold *because of* the slot beyond this (late arrivals
    of abandoned loads, unknown outcomes) is not slot data: it lives in the
    controller's ledger (:mod:`slotfsm.ledger`), where nothing can overwrite it.
    """

    model: str | None = None
    target: ModelEntry | None = None
    leaving: str | None = None
    error: Failure | None = None
    last_use: int | None = None
    seen: bool = False
    used_at: float | None = None
    loaded_seq: int = 0
    gone_seq: int = 0
    in_use: int = 0
    unload_failures: int = 0
    retry_at: float | None = None
    unverified: bool = False
    confirmed: bool | None = None
