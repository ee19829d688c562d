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
    Unloaded,
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

    * ``model``: the model the slot holds on the server; ``target``: the one it
      is validating or loading; ``error``: the latest failure.
    * ``stray``: a model the server may hold on the slot's behalf although the
      slot does not manage it — a load that timed out (it may still arrive), an
      unload that failed, an old model whose unload before a swap failed.  It
      is unloaded when the server is seen holding it (once: ``stray_tried``),
      by an explicit ``unload``, or before the slot's next load; ``reset``
      forgets it.
    * ``last_use``/``seen``: the server's opaque ``last_use`` for ``model`` as
      last observed; ``used_at``: when, on slotfsm's own clock, the model last
      showed use (or was loaded); ``loaded_seq``: the sequence number of its
      load's answer; ``gone_seq``: the latest observation, while loading, that
      did not list the target.
    * ``in_use``: callers inside ``Controller.in_use``.
    """

    model: str | None = None
    target: ModelEntry | None = None
    error: Failure | None = None
    stray: str | None = None
    stray_tried: bool = False
    last_use: int | None = None
    seen: bool = False
    used_at: float | None = None
    loaded_seq: int = 0
    gone_seq: int = 0
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
    """The server may hold a model on this slot's behalf that the slot does not manage."""
    return data.stray is not None


def is_stray(data: SlotData, config: SlotConfig, event: Unloaded) -> bool:
    """The unload that answered was of the slot's stray."""
    return data.stray == event.model


def same_target(data: SlotData, config: SlotConfig, event: Load) -> bool:
    """A load of the model the slot is already validating or loading: it joins that load."""
    return data.target is not None and data.target.name == event.entry.name


def evicted_on_arrival(data: SlotData, config: SlotConfig, event: LoadSucceeded) -> bool:
    """An observation sent after the load answered did not list the model."""
    return data.gone_seq > event.seq


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


def stray_seen(data: SlotData, config: SlotConfig, event: Observed) -> bool:
    """The server holds the slot's stray model (e.g. a load that finished after its
    timeout, ADR-0007 §3), and the slot has not tried to unload it yet."""
    return data.stray is not None and not data.stray_tried and data.stray in event.health


# -- updates (pure) ---------------------------------------------------------------

_NONE: tuple[Effect, ...] = ()


def keep(data: SlotData, config: SlotConfig, event: object) -> tuple[SlotData, tuple[Effect, ...]]:
    """Change nothing (a command with nothing to do, an observation with no news)."""
    return data, _NONE


def clear_error(
    data: SlotData, config: SlotConfig, event: object
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Forget the last failure."""
    return attrs.evolve(data, error=None), _NONE


def forget(
    data: SlotData, config: SlotConfig, event: object
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Forget the last failure and any stray model, without touching the server.

    A stray model the server brings up later is then left alone, like any
    model this controller did not load.
    """
    return attrs.evolve(data, error=None, stray=None, stray_tried=False), _NONE


def start_validation(
    data: SlotData, config: SlotConfig, event: Load
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Validate the requested model before anything is sent to the server."""
    new = attrs.evolve(data, target=event.entry, error=None)
    return new, (StartValidation(event.entry),)


def call_load(
    data: SlotData, config: SlotConfig, event: Validated
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Validation passed: send ``/load``, after unloading what the slot holds or may hold.

    A different model the slot holds (or else its stray) is unloaded first, so
    the server never holds two models on one slot's behalf.  The load's result
    says what, if anything, may be left behind.
    """
    name = event.entry.name
    replaces = next((m for m in (data.model, data.stray) if m is not None and m != name), None)
    new = attrs.evolve(
        data,
        model=None if replaces is not None and replaces == data.model else data.model,
        stray=None if data.stray in (replaces, name) else data.stray,
        stray_tried=False,
        gone_seq=0,
    )
    is_stray = replaces is not None and replaces != data.model
    return new, (CallLoad(event.entry, replaces=replaces, replaces_stray=is_stray),)


def refuse_swap(
    data: SlotData, config: SlotConfig, event: Validated
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Validation failed: keep the held model, nothing sent, report why."""
    return attrs.evolve(data, target=None, error=event.failure), _NONE


def loaded(
    data: SlotData, config: SlotConfig, event: LoadSucceeded
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The model is on the server (anything it replaced is gone); its idle clock starts now."""
    new = attrs.evolve(
        data,
        model=event.model,
        target=None,
        error=None,
        stray=event.stray or (None if data.stray == event.model else data.stray),
        last_use=None,
        seen=False,
        used_at=event.at,
        loaded_seq=event.seq,
    )
    return new, _NONE


def load_failed(
    data: SlotData, config: SlotConfig, event: LoadFailed | LoadTimedOut
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The load failed or timed out; never retried.  What may remain is a stray."""
    return _emptied(data, error=event.failure, stray=event.stray or data.stray), _NONE


def call_unload(
    data: SlotData, config: SlotConfig, event: object
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Send ``/unload`` for the held model (or, holding none, for the stray one)."""
    model = data.model or data.stray
    assert model, "guarded: an unload always names a model"
    return attrs.evolve(data, error=None), (CallUnload(model),)


def unloaded(
    data: SlotData, config: SlotConfig, event: Unloaded
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The server no longer holds the model the slot unloaded (its own, or its stray).

    A stray the server did not hold yet is kept: a load that timed out may
    still arrive, and is unloaded when it is seen.
    """
    stray = None if data.stray == event.model and event.was_loaded else data.stray
    return _emptied(data, error=data.error, stray=stray), _NONE


def stray_unloaded(
    data: SlotData, config: SlotConfig, event: Unloaded
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The stray the slot unloaded on sight is gone from the server."""
    return attrs.evolve(data, stray=None, stray_tried=False), _NONE


def unload_failed(
    data: SlotData, config: SlotConfig, event: UnloadFailed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The unload failed: the model may still be there, a stray an explicit unload retries."""
    stray = data.model or data.stray
    return _emptied(data, error=event.failure, stray=stray), _NONE


def note_target_missing(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Remember the latest observation that did not list the target being loaded."""
    if data.target is None or data.target.name in event.health:
        return data, _NONE
    return attrs.evolve(data, gone_seq=max(data.gone_seq, event.seq)), _NONE


def evicted_after_load(
    data: SlotData, config: SlotConfig, event: LoadSucceeded
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The load answered 200, but the server had already dropped the model again."""
    failure = Failure(
        PreloadError.EVICTED,
        f"model {event.model!r} loaded, then was evicted by the server before the slot settled",
        model=event.model,
    )
    return _emptied(data, error=failure, stray=data.stray), _NONE


def evicted(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The server dropped the slot's model behind its back: say so."""
    failure = Failure(
        PreloadError.EVICTED,
        f"model {data.model!r} was evicted by the server (no longer listed by /health)",
        model=data.model,
    )
    return attrs.evolve(_emptied(data, error=failure, stray=data.stray), target=data.target), _NONE


def idle_unload(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Unload a model idle for ``idle_timeout`` (ADR-0007 §2)."""
    assert data.model
    return data, (CallUnload(data.model),)


def unload_stray(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Unload, once, a stray model the server turned out to hold (ADR-0007 §3).

    A load that finished after its timeout is not adopted: the slot reported
    the timeout, and its state changes only on an explicit command.
    """
    assert data.stray
    return attrs.evolve(data, stray_tried=True), (CallUnload(data.stray),)


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
        used_at = max(event.at, data.used_at or event.at)  # an old reading never turns it back
        return attrs.evolve(data, last_use=seen.last_use, used_at=used_at), _NONE
    return data, _NONE


def count_use(
    data: SlotData, config: SlotConfig, event: UseChanged
) -> tuple[SlotData, tuple[Effect, ...]]:
    """A caller started or stopped using the model: that is use, so the idle clock restarts."""
    in_use = max(0, data.in_use + event.delta)
    return attrs.evolve(data, in_use=in_use, used_at=event.at if data.model else None), _NONE


def _emptied(data: SlotData, *, error: Failure | None = None, stray: str | None = None) -> SlotData:
    tried = data.stray_tried if stray is not None and stray == data.stray else False
    return SlotData(error=error, stray=stray, stray_tried=tried, in_use=data.in_use)


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
_SETTLED_ORDER = tuple(s for s in SlotState if s.settled)

RULES: tuple[Rule, ...] = (
    # commands
    *(
        Rule(T.LOAD, s, S.VALIDATING, start_validation, effects=(StartValidation,))
        for s in (S.IDLE, S.LOADED, S.ERROR)
    ),
    *(Rule(T.LOAD, s, None, keep, same_target, "same model") for s in (S.VALIDATING, S.LOADING)),
    Rule(T.UNLOAD, S.LOADED, S.UNLOADING, call_unload, effects=(CallUnload,)),
    *(
        Rule(T.UNLOAD, s, S.UNLOADING, call_unload, holds_stray, "stray model", (CallUnload,))
        for s in (S.IDLE, S.ERROR)
    ),
    Rule(T.UNLOAD, S.ERROR, S.IDLE, clear_error),
    Rule(T.UNLOAD, S.IDLE, None, clear_error),
    Rule(T.RESET, S.ERROR, S.IDLE, forget),
    *(Rule(T.RESET, s, None, forget) for s in (S.IDLE, S.LOADED)),
    # validation: the only path to the load effect is a pass (ADR-0007 §1)
    Rule(T.VALIDATED, S.VALIDATING, S.LOADING, call_load, passed, "passed", (CallLoad,)),
    Rule(
        T.VALIDATED, S.VALIDATING, S.LOADED, refuse_swap, failed_holding_model, "failed, model kept"
    ),
    Rule(T.VALIDATED, S.VALIDATING, S.ERROR, refuse_swap, failed, "failed"),
    # loading, with its state timer (ADR-0007 §3)
    Rule(
        T.LOAD_SUCCEEDED, S.LOADING, S.IDLE, evicted_after_load, evicted_on_arrival, "evicted since"
    ),
    Rule(T.LOAD_SUCCEEDED, S.LOADING, S.LOADED, loaded),
    Rule(T.LOAD_FAILED, S.LOADING, S.ERROR, load_failed),
    Rule(T.LOAD_TIMEOUT, S.LOADING, S.ERROR, load_failed),
    # unloading (and, in a settled state, the unload of a stray)
    Rule(T.UNLOADED, S.UNLOADING, S.IDLE, unloaded),
    Rule(T.UNLOAD_FAILED, S.UNLOADING, S.ERROR, unload_failed),
    *(Rule(T.UNLOADED, s, None, stray_unloaded, is_stray, "stray gone") for s in _SETTLED_ORDER),
    *(Rule(T.UNLOADED, s, None, keep) for s in _SETTLED_ORDER),
    *(Rule(T.UNLOAD_FAILED, s, None, keep) for s in _SETTLED_ORDER),
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
    *(
        Rule(T.OBSERVED, s, None, unload_stray, stray_seen, "stray seen", (CallUnload,))
        for s in _SETTLED_ORDER
    ),
    Rule(T.OBSERVED, S.LOADED, None, track_use),
    Rule(T.OBSERVED, S.VALIDATING, None, evicted, model_gone, "model gone"),
    Rule(T.OBSERVED, S.VALIDATING, None, track_use),
    Rule(T.OBSERVED, S.LOADING, None, note_target_missing),
    *(Rule(T.OBSERVED, s, None, keep) for s in (S.IDLE, S.UNLOADING, S.ERROR)),
    *(Rule(T.USE, s, None, count_use) for s in _EVERY_STATE),
)
"""Every transition of a slot, in the order their guards are tried."""

POSTPONED: frozenset[tuple[SlotState, Trigger]] = frozenset(
    (state, trigger)
    for state in SlotState
    if not state.settled
    for trigger in Trigger
    if trigger.is_command
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
        self.fired: tuple[Rule, SlotData, tuple[Effect, ...]] | None = None


class Rulebook:
    """Runs :data:`RULES` for any number of slots through one ``transitions.Machine``.

    The machine checks that every state change follows a declared transition
    and picks the first rule whose guard holds; each rule's update is computed
    before the state changes (a raising update leaves the slot as it was) and
    applied after.  One shared machine keeps each slot small; slots join with
    :meth:`attach`.  It is synchronous: the actor owns all concurrency.
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
        # Pairs whose only rule is an unguarded no-op: taken without running the machine.
        self._inert = {
            key: rules[0]
            for key, rules in self._by_key.items()
            if len(rules) == 1 and rules[0] == Rule(key[1], key[0], None, keep)
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
                before=[_prepare_callback(rule)],
                after=[_apply],
            )

    def attach(self, slot: SlotMachine, state: SlotState = SlotState.IDLE) -> None:
        """Put ``slot`` under this rulebook, starting in ``state``."""
        self._machine.add_model(slot, initial=state)

    def detach(self, slot: SlotMachine) -> None:
        """Release ``slot`` from the machine."""
        self._machine.remove_model(slot)

    def outcome(self, state: SlotState, trigger: Trigger) -> Outcome:
        """What ``trigger`` meets in ``state`` before guards are asked.

        ``TAKEN`` means rules exist; if none of their guards holds, the event
        is postponed when the pair is in :data:`POSTPONED`, else refused.
        """
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
            if (source, trigger) in self.postponed:
                return Step(Outcome.POSTPONED, source, source, reason=f"{trigger} waits")
            return Step(
                Outcome.REFUSED, source, source, reason=f"no guard holds for {trigger} in {source}"
            )
        assert slot.fired is not None
        rule, _, effects = slot.fired
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


def _prepare_callback(rule: Rule) -> Callable[[Any], None]:
    def prepare(event_data: Any) -> None:
        slot: SlotMachine = event_data.model
        data, effects = rule.update(slot.data, slot.config, event_data.kwargs["event"])
        slot.fired = (rule, data, effects)

    return prepare


def _apply(event_data: Any) -> None:
    slot: SlotMachine = event_data.model
    assert slot.fired is not None
    slot.data = slot.fired[1]
