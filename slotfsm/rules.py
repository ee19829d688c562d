"""The rule table: every transition of a slot, declared once.

This is the functional core's declaration.  :data:`RULES` is what the engine
runs (:mod:`slotfsm.rulebook`) and what the diagrams are drawn from;
:data:`TIMERS` declares the state timers beside it.  Guards are pure,
synchronous functions of the slot's data, its configuration and the event;
updates are pure functions returning the slot's next data and the effects the
transition asks for.  Nothing here does I/O or knows about anyio.

Precedence is explicit: for one state and trigger, guarded rules are tried
in the order written, and the one unguarded rule (if any) comes last — the
rulebook refuses a table where it does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import attrs

from slotfsm.config import SlotConfig
from slotfsm.errors import Failure, PreloadError
from slotfsm.events import (
    CallLoad,
    CallUnload,
    Cancel,
    Effect,
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
from slotfsm.states import SlotData, SlotState

__all__ = [
    "POSTPONED",
    "RULES",
    "TIMERS",
    "Guard",
    "Rule",
    "StateTimer",
    "Update",
    "has_news",
]

Guard: TypeAlias = Callable[[SlotData, SlotConfig, Any], bool]
Update: TypeAlias = Callable[[SlotData, SlotConfig, Any], tuple[SlotData, tuple[Effect, ...]]]


# -- guards (pure) ----------------------------------------------------------------


def passed(data: SlotData, config: SlotConfig, event: Validated) -> bool:
    """Validation found nothing wrong (ADR-0007 §1): the only way to ``loading``."""
    return event.failure is None


def holding_model(data: SlotData, config: SlotConfig, event: object) -> bool:
    """The slot still holds a model (a refused or cancelled swap keeps it)."""
    return data.model is not None or getattr(event, "kept", None) is not None


def kept_old(data: SlotData, config: SlotConfig, event: LoadFailed | LoadTimedOut) -> bool:
    """The swap stopped before the old model's unload succeeded: the slot keeps it."""
    return event.kept is not None


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
    if data.retry_at is not None and event.at < data.retry_at:
        return False  # an idle unload failed: the backoff is not over
    seen = event.health.get(data.model)
    if seen is None or seen.busy or not data.seen or seen.last_use != data.last_use:
        return False
    return event.at - data.used_at >= config.idle_timeout


def has_news(state: SlotState, data: SlotData, config: SlotConfig, observed: Observed) -> bool:
    """Whether an ``Observed`` rule would change this slot: the controller tells no other.

    False only where the rule table keeps the state and the data: the states
    with no ``Observed`` rule but a no-op; ``loading`` with its target listed
    (or already noted missing); a held model not listed in a reading older
    than its load; and a held model listed, already seen, with the same
    ``last_use``, not busy and — in ``loaded`` — not idle for
    ``idle_timeout`` as :func:`idle_expired` itself decides
    (ADR-0007 §2: a first sighting never expires, ``last_use`` is compared for
    equality only).
    """
    if state is SlotState.LOADED or state is SlotState.VALIDATING:
        if data.model is None:
            return False
        row = observed.health.get(data.model)
        if row is None:
            return observed.seq > data.loaded_seq  # model_gone
        if row.last_use != data.last_use or row.busy or not data.seen:
            return True  # track_use: use, or a first sighting
        if (  # not idle long enough, compared as the guard compares it
            state is SlotState.VALIDATING
            or not config.idle_timeout
            or data.used_at is None
            or observed.at - data.used_at < config.idle_timeout
        ):
            return False
        return idle_expired(data, config, observed)
    if state is SlotState.LOADING and data.target is not None:
        return data.target.name not in observed.health and observed.seq > data.gone_seq
    return False


# -- updates (pure) ---------------------------------------------------------------

_NONE: tuple[Effect, ...] = ()


def keep(data: SlotData, config: SlotConfig, event: object) -> tuple[SlotData, tuple[Effect, ...]]:
    """Change nothing (a command with nothing to do, an observation with no news)."""
    return data, _NONE


def clear_error(
    data: SlotData, config: SlotConfig, event: object
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Forget the last failure (what the server may still hold stays in the ledger)."""
    return attrs.evolve(data, error=None), _NONE


def start_validation(
    data: SlotData, config: SlotConfig, event: Load
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Validate the requested model before anything is sent to the server."""
    new = attrs.evolve(data, target=event.entry, error=None)
    return new, (StartValidation(event.entry),)


def call_load(
    data: SlotData, config: SlotConfig, event: Validated
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Validation passed: send ``/load``, after unloading a different model the slot holds.

    The old model stays the slot's (``leaving``) until its unload is
    answered, so no other slot can take it meanwhile.
    """
    name = event.entry.name
    replaces = data.model if data.model is not None and data.model != name else None
    new = attrs.evolve(
        data,
        model=None if replaces is not None else data.model,
        leaving=replaces,
        gone_seq=0,
    )
    return new, (CallLoad(event.entry, replaces=replaces),)


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
        leaving=None,
        error=event.warning,
        last_use=None,
        seen=False,
        used_at=event.at,
        loaded_seq=event.seq,
        unverified=data.target is not None and not data.target.verified,
        confirmed=event.confirmed,
        unload_failures=0,
        retry_at=None,
    )
    return new, _NONE


def keep_old_model(
    data: SlotData, config: SlotConfig, event: LoadFailed | LoadTimedOut
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The swap stopped before its old model was unloaded: the slot keeps it, nothing loaded."""
    return attrs.evolve(
        data, model=event.kept, target=None, leaving=None, error=event.failure
    ), _NONE


def load_failed(
    data: SlotData, config: SlotConfig, event: LoadFailed | LoadTimedOut
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The load failed or timed out; never retried.

    What the server may still bring up or hold because of it is in the
    ledger, which cleans it up: the slot does not adopt it.
    """
    return _emptied(data, error=event.failure), _NONE


def cancelled(
    data: SlotData, config: SlotConfig, event: Cancel
) -> tuple[SlotData, tuple[Effect, ...]]:
    """``Controller.cancel``: the work stops; a model the slot still holds stays.

    A load the slot stops waiting for is not un-sent: the ledger follows it
    to its answer and cleans up what it brings (ADR-0007 §4).
    """
    name = data.target.name if data.target is not None else "?"
    failure = Failure(PreloadError.CANCELLED, f"loading {name!r} was cancelled", model=name)
    model = data.model or event.kept
    if model is not None:
        return attrs.evolve(data, model=model, target=None, leaving=None, error=failure), _NONE
    return _emptied(data, error=failure), _NONE


def call_unload(
    data: SlotData, config: SlotConfig, event: object
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Send ``/unload`` for the held model."""
    assert data.model, "guarded: an unload always names a model"
    return attrs.evolve(data, error=None), (CallUnload(data.model),)


def unloaded(
    data: SlotData, config: SlotConfig, event: Unloaded
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The server no longer holds the model the slot unloaded."""
    return _emptied(data, error=data.error), _NONE


def unload_failed(
    data: SlotData, config: SlotConfig, event: UnloadFailed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The unload failed: the model may still be there, and it is still the slot's.

    The slot stays ``loaded`` with the failure noted; an explicit ``unload``
    tries again at once, the idle rule after a bounded backoff (30 s, doubling
    up to 480 s; over as soon as the model shows use or leaves).
    """
    failures = data.unload_failures + 1
    retry_at = event.at + min(30.0 * 2 ** (failures - 1), 480.0)
    return attrs.evolve(
        data, error=event.failure, unload_failures=failures, retry_at=retry_at
    ), _NONE


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
    return _emptied(data, error=failure), _NONE


def evicted(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """The server dropped the slot's model behind its back: say so."""
    cause = event.cause or "gone at a poll: another client, a server restart or its own eviction"
    failure = Failure(
        PreloadError.EVICTED,
        f"model {data.model!r} was evicted by the server (no longer listed by /health);"
        f" cause: {cause}",
        model=data.model,
        found=cause,
    )
    return attrs.evolve(_emptied(data, error=failure), target=data.target), _NONE


def idle_unload(
    data: SlotData, config: SlotConfig, event: Observed
) -> tuple[SlotData, tuple[Effect, ...]]:
    """Unload a model idle for ``idle_timeout`` (ADR-0007 §2)."""
    assert data.model
    return data, (CallUnload(data.model),)


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
        new = attrs.evolve(data, last_use=seen.last_use, used_at=used_at)
        return attrs.evolve(new, unload_failures=0, retry_at=None), _NONE
    return data, _NONE


def count_use(
    data: SlotData, config: SlotConfig, event: UseChanged
) -> tuple[SlotData, tuple[Effect, ...]]:
    """A caller started or stopped using the model: that is use, so the idle clock restarts."""
    in_use = max(0, data.in_use + event.delta)
    used_at = event.at if data.model else None
    return attrs.evolve(
        data, in_use=in_use, used_at=used_at, unload_failures=0, retry_at=None
    ), _NONE


def _emptied(data: SlotData, *, error: Failure | None = None) -> SlotData:
    return SlotData(error=error, in_use=data.in_use)


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


@attrs.frozen
class StateTimer:
    """A timer owned by a state: armed on entry, cancelled by any exit (like gen_statem's).

    ``seconds`` names the :class:`SlotConfig` field that sets it; when it
    fires, ``trigger`` is fed to the slot.
    """

    seconds: str
    trigger: Trigger


S, T = SlotState, Trigger


def on(
    trigger: Trigger,
    *sources: SlotState,
    to: SlotState | None = None,
    do: Update = keep,
    when: Guard | None = None,
    label: str = "",
    effects: tuple[type[Effect], ...] = (),
) -> tuple[Rule, ...]:
    """The same rule from each of ``sources`` (``to=None``: the state stays)."""
    return tuple(Rule(trigger, s, to, do, when, label, effects) for s in sources)


SETTLED = (S.IDLE, S.LOADED, S.ERROR)
EVERY = tuple(SlotState)

TIMERS: dict[SlotState, StateTimer] = {
    S.LOADING: StateTimer("load_timeout", T.LOAD_TIMEOUT),  # ADR-0007 §3
}
"""The state timers: the loading state's load timeout."""

# fmt: off
RULES: tuple[Rule, ...] = sum(
    (
        # commands
        on(T.LOAD, *SETTLED, to=S.VALIDATING, do=start_validation, effects=(StartValidation,)),
        on(T.LOAD, S.VALIDATING, S.LOADING, when=same_target, label="same model"),
        on(T.UNLOAD, S.LOADED, to=S.UNLOADING, do=call_unload, effects=(CallUnload,)),
        on(T.UNLOAD, S.ERROR, to=S.IDLE, do=clear_error),
        on(T.UNLOAD, S.IDLE, do=clear_error),
        on(T.RESET, S.ERROR, to=S.IDLE, do=clear_error),
        on(T.RESET, S.IDLE, S.LOADED, do=clear_error),
        on(T.CANCEL, S.VALIDATING, S.LOADING, to=S.LOADED, do=cancelled, when=holding_model,
           label="model kept"),
        on(T.CANCEL, S.VALIDATING, S.LOADING, to=S.ERROR, do=cancelled),
        on(T.CANCEL, S.IDLE, S.LOADED, S.UNLOADING, S.ERROR),
        # validation: the only path to the load effect is a pass (ADR-0007 §1)
        on(T.VALIDATED, S.VALIDATING, to=S.LOADING, do=call_load, when=passed, label="passed",
           effects=(CallLoad,)),
        on(T.VALIDATED, S.VALIDATING, to=S.LOADED, do=refuse_swap, when=holding_model,
           label="failed, model kept"),
        on(T.VALIDATED, S.VALIDATING, to=S.ERROR, do=refuse_swap),
        # loading, under its state timer (ADR-0007 §3)
        on(T.LOAD_SUCCEEDED, S.LOADING, to=S.IDLE, do=evicted_after_load,
           when=evicted_on_arrival, label="evicted since"),
        on(T.LOAD_SUCCEEDED, S.LOADING, to=S.LOADED, do=loaded),
        on(T.LOAD_FAILED, S.LOADING, to=S.LOADED, do=keep_old_model, when=kept_old,
           label="old model kept"),
        on(T.LOAD_FAILED, S.LOADING, to=S.ERROR, do=load_failed),
        on(T.LOAD_TIMEOUT, S.LOADING, to=S.LOADED, do=keep_old_model, when=kept_old,
           label="old model kept"),
        on(T.LOAD_TIMEOUT, S.LOADING, to=S.ERROR, do=load_failed),
        # unloading
        on(T.UNLOADED, S.UNLOADING, to=S.IDLE, do=unloaded),
        on(T.UNLOAD_FAILED, S.UNLOADING, to=S.LOADED, do=unload_failed),
        # observations of the server (ADR-0007 §2)
        on(T.OBSERVED, S.LOADED, to=S.IDLE, do=evicted, when=model_gone, label="model gone"),
        on(T.OBSERVED, S.LOADED, to=S.UNLOADING, do=idle_unload, when=idle_expired,
           label="idle expired, not in use", effects=(CallUnload,)),
        on(T.OBSERVED, S.LOADED, do=track_use),
        on(T.OBSERVED, S.VALIDATING, do=evicted, when=model_gone, label="model gone"),
        on(T.OBSERVED, S.VALIDATING, do=track_use),
        on(T.OBSERVED, S.LOADING, do=note_target_missing),
        on(T.OBSERVED, S.IDLE, S.UNLOADING, S.ERROR),
        on(T.USE, *EVERY, do=count_use),
    ),
    (),
)
# fmt: on
"""Every transition of a slot.  For one state and trigger, the guarded rules are
tried in the order written and the unguarded one last."""

POSTPONED: frozenset[tuple[SlotState, Trigger]] = frozenset(
    (state, trigger)
    for state in SlotState
    if not state.settled
    for trigger in Trigger
    if trigger.is_command
)
"""Commands that wait while the slot is busy, offered again after each state change."""
