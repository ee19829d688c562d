"""The rulebook: runs :data:`slotfsm.rules.RULES` for any number of slots.

Every event has a defined outcome in every state (see :meth:`Rulebook.outcome`):

* **taken** by the first rule whose guard holds (a rule with ``dest=None`` is
  internal: the state stays, only the data changes);
* **postponed** (:data:`~slotfsm.rules.POSTPONED`) — a command that arrives
  while the slot is busy waits, like gen_statem's postpone, and is offered
  again after the next state change;
* **refused** with a reason — a work result for a state the slot has left.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import attrs
from transitions import Machine, Transition
from transitions.core import EventData, listify

from slotfsm.config import SlotConfig
from slotfsm.errors import ConfigError
from slotfsm.events import Effect, Event, Trigger
from slotfsm.rules import POSTPONED, RULES, Rule, keep
from slotfsm.states import SlotData, SlotState

__all__ = ["Outcome", "Rulebook", "SlotMachine", "Step"]

_transitions_log = logging.getLogger("transitions")
if _transitions_log.level == logging.NOTSET:
    # transitions logs several INFO lines per event; slotfsm logs one line per
    # transition itself (logger "slotfsm").  Set a level to hear it anyway.
    _transitions_log.setLevel(logging.WARNING)


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


_NO_DATA = SlotData()
"""A new slot's data, shared: it is immutable, and one per idle slot is one more object
for the cyclic collector to walk."""


class SlotMachine:
    """One slot as the shared machine sees it: a state, data and configuration."""

    state: SlotState

    def __init__(self, config: SlotConfig, data: SlotData | None = None) -> None:
        self.config = config
        self.data = data if data is not None else _NO_DATA
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
            earlier = self._by_key.get(key, ())
            if earlier and earlier[-1].guard is None:
                raise ConfigError(
                    f"rule table: an unguarded rule for {rule.trigger} in {rule.source}"
                    " must come last (it would hide the rules after it)"
                )
            self._by_key[key] = (*earlier, rule)
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
        self._machine.check_lean()
        # What ``Event.trigger`` would look up per step, looked up once: the
        # state, the event and the transitions in the order declared.
        self._fire = {
            (state, trigger): (
                self._machine.get_state(state),
                self._machine.events[trigger.value],
                tuple(self._machine.events[trigger.value].transitions[state.name]),
            )
            for state, trigger in self._by_key
        }

    def attach(self, slot: SlotMachine, state: SlotState = SlotState.IDLE) -> None:
        """Put ``slot`` under this rulebook, starting in ``state`` (constant time)."""
        self._machine.add_model(slot, initial=state)

    def detach(self, slot: SlotMachine) -> None:
        """Release ``slot`` from the machine (constant time)."""
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
        if not self._run_machine(slot, source, trigger, event):
            if (source, trigger) in self.postponed:
                return Step(Outcome.POSTPONED, source, source, reason=f"{trigger} waits")
            return Step(
                Outcome.REFUSED, source, source, reason=f"no guard holds for {trigger} in {source}"
            )
        assert slot.fired is not None
        rule, _, effects = slot.fired
        return Step(Outcome.TAKEN, source, slot.state, rule, effects)

    def _run_machine(
        self, slot: SlotMachine, source: SlotState, trigger: Trigger, event: Event
    ) -> bool:
        """Run the machine's transitions for ``trigger`` in ``source`` until one is taken.

        What ``Event.trigger`` does for a machine without queued events,
        exception or finalize callbacks, for a pair known to have rules.
        """
        state, machine_event, transitions = self._fire[(source, trigger)]
        data = EventData(state, machine_event, self._machine, slot, (), {"event": event})
        for transition in transitions:
            data.transition = transition
            if transition.execute(data):
                return True
        return False


class _RuleTransition(Transition):
    """A transition that runs its rule's callbacks, and nothing else.

    The rulebook's machine has no state ``on_enter``/``on_exit`` callbacks,
    no machine-wide ones and no ``prepare`` lists (:class:`Rulebook` checks
    it): ``transitions`` would walk those empty lists and emit a handful of
    debug lines per step.  This does the rest exactly as ``Transition`` does:
    the conditions in order, ``before``, the state change, ``after``.
    """

    def execute(self, event_data: Any) -> bool:
        for condition in self.conditions:
            if not condition.check(event_data):
                return False
        for func in self.before:
            cast(Callable[[Any], None], func)(event_data)  # callables: see check_lean
        if self.dest:  # None: an internal rule, the state stays
            machine = event_data.machine
            machine.set_state(self.dest, event_data.model)
            event_data.update(getattr(event_data.model, machine.model_attribute))
        for func in self.after:
            cast(Callable[[Any], None], func)(event_data)
        return True


class _SharedMachine(Machine):
    """A ``Machine`` that binds no convenience methods onto its models, and finds them fast.

    ``transitions`` normally gives every model ``load()``, ``may_load()``,
    ``is_idle()`` ... for each trigger and state: a few kilobytes per slot that
    nothing here uses, since :meth:`Rulebook.step` fires events directly.

    It also keeps its models in a list that ``add_model`` searches before
    adding and ``remove_model`` searches to remove: attaching n slots would
    cost n² comparisons.  Here the models are kept in :class:`_Models`.
    Its transitions are :class:`_RuleTransition`.
    """

    transition_cls = _RuleTransition

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models: Any = _Models()  # transitions declares a list; it needs only these

    def check_lean(self) -> None:
        """Refuse what the rulebook's steps would not honour: queued events, callbacks not run."""
        transitions = [t for e in self.events.values() for ts in e.transitions.values() for t in ts]
        unrun = [
            self.before_state_change,
            self.after_state_change,
            self.prepare_event,
            self.finalize_event,
            self.on_exception,
            self.on_final,
            *(t.prepare for t in transitions),
            *(s.on_enter + s.on_exit for s in self.states.values()),
        ]
        rule_callbacks = [f for t in transitions for f in (*t.before, *t.after)]
        if any(unrun) or self.has_queue or not all(callable(f) for f in rule_callbacks):
            raise ConfigError("the rulebook's machine runs rule callbacks only, as callables")

    def _checked_assignment(self, model: object, name: str, func: object) -> None:
        return None

    def add_model(self, model: Any, initial: Any = None) -> None:
        """Attach ``model`` (one slot, or several) in ``initial``: its state and membership only.

        ``Machine.add_model`` also builds a ``functools.partial`` for every
        trigger and state (a few dozen per slot, dropped at once since
        nothing is bound) and looks on the model for ``on_enter_*`` methods a
        slot never has: most of what attaching cost.
        """
        if initial is None:
            initial = self.initial
        state = self.get_state(initial)
        for slot in listify(model):
            if slot not in self.models:
                setattr(slot, self.model_attribute, state.value)
                self.models.append(slot)


class _Models:
    """The machine's models, in the order attached, with constant-time membership and removal.

    It offers what ``transitions`` does with its model list: ``in``,
    ``append``, ``remove``, ``len``, iteration and indexing.  Models are told
    apart by identity, as the list tells slots apart (they have no ``__eq__``).
    """

    __slots__ = ("_models",)

    def __init__(self) -> None:
        self._models: dict[int, object] = {}

    def __contains__(self, model: object) -> bool:
        return id(model) in self._models

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[object]:
        return iter(self._models.values())

    def __getitem__(self, index: int) -> object:
        return list(self._models.values())[index]

    def append(self, model: object) -> None:
        self._models[id(model)] = model

    def remove(self, model: object) -> None:
        if self._models.pop(id(model), None) is None:
            raise ConfigError(f"{model!r} is not attached")


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
