"""The rulebook: every state, trigger, guard and effect of a slot, declared once.

This is the functional core.  :data:`RULES` is the single declaration that
the engine runs (through one shared :class:`transitions.Machine`) and that the
diagrams are drawn from.  Guards are pure, synchronous functions of the slot's
data, its configuration and the event; updates are pure functions returning
the slot's next data and the effects the transition asks for.  Nothing here
does I/O or knows about anyio, so property tests can drive it directly.

Every event has a defined outcome in every state (see :meth:`Rulebook.outcome`):

* **taken** by the first rule whose guard holds (a rule with ``dest=None`` is
  internal: the state stays, only the data changes);
* **postponed** (:data:`POSTPONED`) — a command that arrives while the slot
  is busy waits, like gen_statem's postpone, and is offered again after the
  next state change;
* **refused** with a reason — a work result for a state the slot has left.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
from transitions import Machine

from slotfsm.config import SlotConfig
from slotfsm.errors import Failure, PreloadError
from slotfsm.events import (
    CallLoad,
    CallUnload,
    Effect,
    Event,
    Load,
    LoadFailed,
    LoadSucceeded,
    LoadTimedOut,
    Observed,
    StartValidation,
    Trigger,
    UnloadFailed,
    UseChanged,
    Validated,
)

if TYPE_CHECKING:
    from slotfsm.registry import ModelEntry

__all__ = [
    "POSTPONED",
    "RULES",
    "Outcome",
    "Rule",
    "Rulebook",
    "SlotData",
    "SlotMachine",
    "SlotState",
    "Step",
    "Guard",
    "Update",
]


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

    ``model`` is the model the slot holds on the server; ``target`` the one it
    is validating or loading; ``error`` the latest failure; ``stray`` a model
    the server may still bring up for a load this slot gave up on (a load
    timeout).  ``last_use``/``seen`` remember the server's opaque ``last_use``
    for ``model``, and ``used_at`` is when, on slotfsm's own clock, the model
    last showed use (or was loaded), and ``loaded_seq`` the sequence number of
    its load's answer.  ``in_use`` counts callers inside
    ``Controller.in_use``.
    """

    model: str | None = None
    target: ModelEntry | None = None
    error: Failure | None = None
    stray: str | None = None
    last_use: int | None = None
    seen: bool = False
    used_at: float | None = None
    loaded_seq: int = 0
    in_use: int = 0


Guard: TypeAlias = Callable[[SlotData, SlotConfig, Any], bool]
Update: TypeAlias = Callable[[SlotData, SlotConfig, Any], tuple[SlotData, tuple[Effect, ...]]]


# -- guards (pure) ----------------------------------------------------------------


def passed(data: SlotData, config: SlotConfig, event: Validated) -> bool:
    """Validation found nothing wrong (ADR-0007 §1): the only way to ``loading``."""
    return event.failure is None


def failed_holding_model(data: SlotData, config: SlotConfig, event: Validated) -> bool:
    """Validation failed while the slot still holds its previous model."""
    return event.failure is not None and data.model is not None


def failed(data: SlotData, config: SlotConfig, event: Validated) -> bool:
    """Validation failed."""
    return event.failure is not None


def holds_stray(data: SlotData, config: SlotConfig, event: object) -> bool:
    """The server may hold a model for a load this slot gave up on."""
    return data.stray is not None


def model_gone(data: SlotData, config: SlotConfig, event: Observed) -> bool:
    """The server no longer lists the slot's model (LRU, evict-all, restart).

    Only an observation asked after the model's load answered can tell.
    """
    return data.model is not None and event.seq > data.loaded_seq and data.model not in event.health


def idle_expired(data: SlotData, config: SlotConfig, event: Observed) -> bool:
    """The model showed no use for ``idle_timeout`` and nothing marks it busy (ADR-0007 §2).

    ``last_use`` is compared for equality only: its unit is the server's own
    monotonic clock, never assumed.  A first sighting never expires.
    """
    if not config.idle_timeout or data.model is None or data.in_use or data.used_at is None:
        return False
    seen = event.health.get(data.model)
    if seen is None or seen.busy or not data.seen or seen.last_use != data.last_use:
        return False
    return event.at - data.used_at >= config.idle_timeout


def late_arrival(data: SlotData, config: SlotConfig, event: Observed) -> bool:
    """A load this slot timed out on has since finished on the server (ADR-0007 §3)."""
    return (
        data.error is not None
        and data.error.kind is PreloadError.LOAD_TIMEOUT
        and data.stray is not None
        and data.stray in event.health
    )


# -- updates (pure) ---------------------------------------------------------------

_NONE: tuple[Effect, ...] = ()


def keep(data: SlotData, config: SlotConfig, event: object) -> tuple[SlotData, tuple[Effect, ...]]:
    """Change nothing (a command with nothing to do, an observation with no news)."""
    return data, _NONE


def clear_error(
    data: SlotData, config: SlotConfig, event: object
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Forget the last failure and any stray model: the slot starts afresh."""
    return attrs.evolve(data, error=None, stray=None), _NONE


def start_validation(
    data: SlotData, config: SlotConfig, event: Load
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Validate the requested model before anything is sent to the server."""
    stray = None if data.stray == event.entry.name else data.stray
    new = attrs.evolve(data, target=event.entry, error=None, stray=stray)
    return new, (StartValidation(event.entry),)


def call_load(
    data: SlotData, config: SlotConfig, event: Validated
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Validation passed: send ``/load`` (after unloading a different held model)."""
    entry = event.entry
    replaces = data.model if data.model not in (None, entry.name) else None
    return data, (CallLoad(entry, replaces=replaces),)


def refuse_swap(
    data: SlotData, config: SlotConfig, event: Validated
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Validation failed: keep the held model, nothing sent, report why."""
    return attrs.evolve(data, target=None, error=event.failure), _NONE


def loaded(
    data: SlotData, config: SlotConfig, event: LoadSucceeded
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The model is on the server; its idle clock starts now."""
    new = attrs.evolve(
        data,
        model=event.model,
        target=None,
        error=None,
        stray=None,
        last_use=None,
        seen=False,
        used_at=event.at,
        loaded_seq=event.seq,
    )
    return new, _NONE


def load_failed(
    data: SlotData, config: SlotConfig, event: LoadFailed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The load failed; the slot holds nothing (a held model was replaced first)."""
    return _emptied(data, error=event.failure), _NONE


def load_timed_out(
    data: SlotData, config: SlotConfig, event: LoadTimedOut
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Give up on the load, never retry it, and remember the model may still arrive."""
    stray = data.target.name if data.target is not None else None
    return _emptied(data, error=event.failure, stray=stray), _NONE


def call_unload(
    data: SlotData, config: SlotConfig, event: object
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Send ``/unload`` for the held model (or the stray one, from ``error``)."""
    model = data.model or data.stray
    assert model, "guarded: an unload always names a model"
    return attrs.evolve(data, error=None), (CallUnload(model),)


def unloaded(
    data: SlotData, config: SlotConfig, event: object
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The server no longer holds the slot's model."""
    return _emptied(data), _NONE


def unload_failed(
    data: SlotData, config: SlotConfig, event: UnloadFailed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The unload failed: the model may still be there; an explicit unload may try again."""
    stray = data.model or data.stray
    return _emptied(data, error=event.failure, stray=stray), _NONE


def evicted(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The server dropped the slot's model behind its back: say so."""
    failure = Failure(
        PreloadError.EVICTED,
        f"model {data.model!r} was evicted by the server (no longer listed by /health)",
        model=data.model,
    )
    return attrs.evolve(_emptied(data), target=data.target, error=failure), _NONE


def idle_unload(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Unload a model idle for ``idle_timeout`` (ADR-0007 §2)."""
    assert data.model
    return data, (CallUnload(data.model),)


def unload_stray(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Unload, once, a model that arrived after its load timed out (ADR-0007 §3).

    The slot stays in ``error``: it reported the timeout, and ``error`` is
    left only by an explicit command, so the late model is not adopted.
    """
    assert data.stray
    return attrs.evolve(data, stray=None), (CallUnload(data.stray),)


def track_use(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Restart the idle clock when the server's ``last_use`` changed or it says busy."""
    seen = event.health.get(data.model) if data.model is not None else None
    if seen is None:
        return data, _NONE
    if not data.seen:
        return attrs.evolve(data, seen=True, last_use=seen.last_use), _NONE
    if seen.last_use != data.last_use or seen.busy:
        return attrs.evolve(data, last_use=seen.last_use, used_at=event.at), _NONE
    return data, _NONE


def count_use(
    data: SlotData, config: SlotConfig, event: UseChanged
) -> tuple[SlotData, tuple[Effect, ...]]:
    """A caller started or stopped using the model: that is use, so the idle clock restarts."""
    in_use = max(0, data.in_use + event.delta)
    return attrs.evolve(data, in_use=in_use, used_at=event.at if data.model else None), _NONE


def _emptied(data: SlotData, *, error: Failure | None = None, stray: str | None = None) -> SlotData:
    return SlotData(error=error, stray=stray, in_use=data.in_use)


# -- the declaration ------------------------------------------------------------------


@attrs.frozen
class Rule:
    """One transition: from ``source`` on ``trigger``, if ``guard`` holds, to ``dest``.

    ``dest=None`` is an internal transition (the state does not change and no
    state-owned work is cancelled).  ``label`` names the guard on the diagram;
    ``effects`` declares the kinds of effect ``update`` may ask for (the
    property tests hold every update to its declaration).
    """

    trigger: Trigger
    source: SlotState
    dest: SlotState | None
    update: Update
    guard: Guard | None = None
    label: str = ""
    effects: tuple[type[Effect], ...] = ()

    @property
    def notable(self) -> bool:
        """A change of state, or an internal rule with a guard or an effect.

        Notable rules are drawn on the diagram and published to watchers; the
        others only update bookkeeping (use counts, ``last_use``).
        """
        return self.dest is not None or self.guard is not None or bool(self.effects)

    @property
    def caption(self) -> str:
        """``trigger [label]``, as drawn on the diagram's edge."""
        name = self.trigger.value.replace("_", " ")
        caption = f"{name} [{self.label}]" if self.label else name
        if self.effects:
            caption += " / " + ", ".join(effect.__name__ for effect in self.effects)
        return caption


S, T = SlotState, Trigger
_EVERY_STATE = tuple(SlotState)

RULES: tuple[Rule, ...] = (
    # commands
    Rule(T.LOAD, S.IDLE, S.VALIDATING, start_validation, effects=(StartValidation,)),
    Rule(T.LOAD, S.LOADED, S.VALIDATING, start_validation, effects=(StartValidation,)),
    Rule(T.LOAD, S.ERROR, S.VALIDATING, start_validation, effects=(StartValidation,)),
    Rule(T.UNLOAD, S.LOADED, S.UNLOADING, call_unload, effects=(CallUnload,)),
    Rule(T.UNLOAD, S.ERROR, S.UNLOADING, call_unload, holds_stray, "stray model", (CallUnload,)),
    Rule(T.UNLOAD, S.ERROR, S.IDLE, clear_error),
    Rule(T.UNLOAD, S.IDLE, None, clear_error),
    Rule(T.RESET, S.ERROR, S.IDLE, clear_error),
    Rule(T.RESET, S.IDLE, None, clear_error),
    Rule(T.RESET, S.LOADED, None, clear_error),
    # validation: the only path to the load effect is a pass (ADR-0007 §1)
    Rule(T.VALIDATED, S.VALIDATING, S.LOADING, call_load, passed, "passed", (CallLoad,)),
    Rule(
        T.VALIDATED, S.VALIDATING, S.LOADED, refuse_swap, failed_holding_model, "failed, model kept"
    ),
    Rule(T.VALIDATED, S.VALIDATING, S.ERROR, refuse_swap, failed, "failed"),
    # loading, with its state timer (ADR-0007 §3)
    Rule(T.LOAD_SUCCEEDED, S.LOADING, S.LOADED, loaded),
    Rule(T.LOAD_FAILED, S.LOADING, S.ERROR, load_failed),
    Rule(T.LOAD_TIMEOUT, S.LOADING, S.ERROR, load_timed_out),
    # unloading
    Rule(T.UNLOADED, S.UNLOADING, S.IDLE, unloaded),
    Rule(T.UNLOAD_FAILED, S.UNLOADING, S.ERROR, unload_failed),
    Rule(T.UNLOADED, S.ERROR, None, keep),
    Rule(T.UNLOAD_FAILED, S.ERROR, None, keep),
    # observations of the server (ADR-0007 §2)
    Rule(T.OBSERVED, S.LOADED, S.IDLE, evicted, model_gone, "model gone"),
    Rule(
        T.OBSERVED,
        S.LOADED,
        S.UNLOADING,
        idle_unload,
        idle_expired,
        "idle expired, not in use",
        (CallUnload,),
    ),
    Rule(T.OBSERVED, S.LOADED, None, track_use),
    Rule(T.OBSERVED, S.VALIDATING, None, evicted, model_gone, "model gone"),
    Rule(T.OBSERVED, S.VALIDATING, None, track_use),
    Rule(T.OBSERVED, S.ERROR, None, unload_stray, late_arrival, "late arrival", (CallUnload,)),
    *(Rule(T.OBSERVED, s, None, keep) for s in (S.IDLE, S.LOADING, S.UNLOADING, S.ERROR)),
    *(Rule(T.USE, s, None, count_use) for s in _EVERY_STATE),
)
"""Every transition of a slot, in the order their guards are tried."""

POSTPONED: frozenset[tuple[SlotState, Trigger]] = frozenset(
    (state, trigger)
    for state in (S.VALIDATING, S.LOADING, S.UNLOADING)
    for trigger in (T.LOAD, T.UNLOAD, T.RESET)
)
"""Commands that wait while the slot is busy, offered again after each state change."""


# -- running it -------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """What became of one event."""

    TAKEN = "taken"
    POSTPONED = "postponed"
    REFUSED = "refused"


@attrs.frozen
class Step:
    """The result of feeding one event to one slot."""

    outcome: Outcome
    source: SlotState
    dest: SlotState
    rule: Rule | None = None
    effects: tuple[Effect, ...] = ()
    reason: str = ""

    @property
    def changed_state(self) -> bool:
        """True when the slot left its state (state-owned work must stop)."""
        return (
            self.outcome is Outcome.TAKEN and self.rule is not None and self.rule.dest is not None
        )

    @property
    def notable(self) -> bool:
        """True when the rule taken is notable (see :attr:`Rule.notable`)."""
        return self.outcome is Outcome.TAKEN and self.rule is not None and self.rule.notable


class SlotMachine:
    """One slot as the shared machine sees it: a state, data and configuration."""

    state: SlotState

    def __init__(self, config: SlotConfig, data: SlotData | None = None) -> None:
        self.config = config
        self.data = data if data is not None else SlotData()
        self.fired: tuple[Rule, tuple[Effect, ...]] | None = None


class Rulebook:
    """Runs :data:`RULES` for any number of slots through one ``transitions.Machine``.

    One shared machine keeps each slot small (the machine's per-model cost is
    a few bound triggers); slots join with :meth:`attach`.  The machine is
    synchronous: the actor owns all concurrency.
    """

    def __init__(
        self,
        rules: Iterable[Rule] = RULES,
        postponed: frozenset[tuple[SlotState, Trigger]] = POSTPONED,
    ) -> None:
        self.rules = tuple(rules)
        self.postponed = postponed
        self._by_key: dict[tuple[SlotState, Trigger], tuple[Rule, ...]] = {}
        for rule in self.rules:
            key = (rule.source, rule.trigger)
            self._by_key[key] = (*self._by_key.get(key, ()), rule)
        # Pairs whose only rule changes nothing: taken without running the machine.
        self._inert = {
            key: rules[0]
            for key, rules in self._by_key.items()
            if len(rules) == 1 and rules[0].update is keep and rules[0].dest is None
        }
        self._machine = _SharedMachine(
            model=None,
            states=SlotState,
            initial=SlotState.IDLE,
            auto_transitions=False,
            send_event=True,
        )
        for rule in self.rules:
            self._machine.add_transition(
                rule.trigger.value,
                rule.source,
                rule.dest,
                conditions=[_guard_callback(rule)] if rule.guard else [],
                after=[_after_callback(rule)],
            )

    def attach(self, slot: SlotMachine, state: SlotState = SlotState.IDLE) -> None:
        """Put ``slot`` under this rulebook, starting in ``state``."""
        self._machine.add_model(slot, initial=state)

    def detach(self, slot: SlotMachine) -> None:
        """Release ``slot`` from the machine."""
        self._machine.remove_model(slot)

    def outcome(self, state: SlotState, trigger: Trigger) -> Outcome:
        """The outcome class of ``trigger`` in ``state`` (guards decide among rules)."""
        if (state, trigger) in self._by_key:
            return Outcome.TAKEN
        if (state, trigger) in self.postponed:
            return Outcome.POSTPONED
        return Outcome.REFUSED

    def rules_for(self, state: SlotState, trigger: Trigger) -> tuple[Rule, ...]:
        """The rules tried, in order, for ``trigger`` in ``state``."""
        return self._by_key.get((state, trigger), ())

    def step(self, slot: SlotMachine, event: Event) -> Step:
        """Feed ``event`` to ``slot``: change its state and data, return the effects."""
        source = slot.state
        trigger = event.trigger
        kind = self.outcome(source, trigger)
        if kind is Outcome.POSTPONED:
            return Step(kind, source, source, reason=f"{trigger} waits while {source}")
        if kind is Outcome.REFUSED:
            return Step(kind, source, source, reason=f"{trigger} does not apply in {source}")
        inert = self._inert.get((source, trigger))
        if inert is not None:
            return Step(Outcome.TAKEN, source, source, inert)
        slot.fired = None
        if not self._machine.events[trigger.value].trigger(slot, event=event):
            return Step(
                Outcome.REFUSED, source, source, reason=f"no guard holds for {trigger} in {source}"
            )
        assert slot.fired is not None
        rule, effects = slot.fired
        return Step(Outcome.TAKEN, source, slot.state, rule, effects)


class _SharedMachine(Machine):
    """A ``Machine`` that binds no convenience methods onto its models.

    ``transitions`` normally gives every model ``load()``, ``may_load()``,
    ``is_idle()`` ... for each trigger and state: a few kilobytes per slot that
    nothing here uses, since :meth:`Rulebook.step` fires events directly.
    """

    def _checked_assignment(self, model: object, name: str, func: object) -> None:
        return None


def _guard_callback(rule: Rule) -> Callable[[Any], bool]:
    guard = rule.guard
    assert guard is not None

    def condition(event_data: Any) -> bool:
        slot: SlotMachine = event_data.model
        return guard(slot.data, slot.config, event_data.kwargs["event"])

    condition.__name__ = guard.__name__
    return condition


def _after_callback(rule: Rule) -> Callable[[Any], None]:
    def apply(event_data: Any) -> None:
        slot: SlotMachine = event_data.model
        slot.data, effects = rule.update(slot.data, slot.config, event_data.kwargs["event"])
        slot.fired = (rule, effects)

    return apply
