"""The rulebook on its own: guards, totality, and a Hypothesis state machine over it."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from kit import examples

from slotfsm import Failure, Health, LoadedModel, ModelEntry, PreloadError, SlotConfig, SlotState
from slotfsm.events import (
    CallLoad,
    CallUnload,
    Event,
    Load,
    LoadFailed,
    LoadSucceeded,
    LoadTimedOut,
    Observed,
    Reset,
    StartValidation,
    Trigger,
    Unload,
    Unloaded,
    UnloadFailed,
    UseChanged,
    Validated,
)
from slotfsm.rulebook import Outcome, Rulebook, SlotMachine
from slotfsm.rules import POSTPONED, RULES, idle_expired, model_gone
from slotfsm.states import SlotData
from slotfsm.testing import strategies

NAMES = ("alpha", "beta", "gamma")
ENTRIES = {
    name: ModelEntry(name=name, path=f"/models/{name}.gguf", sha256=f"{i:064x}", size=100)
    for i, name in enumerate(NAMES)
}
SHA_FAIL = Failure(PreloadError.SHA256_MISMATCH, "bad bytes")


def health(**models: int | None) -> Health:
    return Health(status="ok", models=tuple(LoadedModel(n, last_use=u) for n, u in models.items()))


def test_every_event_in_every_state_has_a_defined_outcome() -> None:
    book = Rulebook()
    for state in SlotState:
        for trigger in Trigger:
            outcome = book.outcome(state, trigger)
            rules = book.rules_for(state, trigger)
            falls_back = (state, trigger) in POSTPONED
            if trigger.is_command:
                # A command is never refused: taken when settled; when busy, postponed
                # unless a guard lets it join (a load of the model already under way).
                assert outcome is not Outcome.REFUSED, (state, trigger)
                assert state.settled or falls_back, (state, trigger)
            if outcome is Outcome.TAKEN:
                # Some rule always holds: the last is unguarded, or the guards are
                # exhaustive (a validation result either passed or failed), or the
                # event falls back to waiting.
                labels = {r.label for r in rules}
                assert rules[-1].guard is None or {"passed", "failed"} <= labels or falls_back


def test_only_a_passed_validation_leads_to_the_load_effect() -> None:
    loading_rules = [r for r in RULES if r.dest is SlotState.LOADING]
    assert [(r.source, r.trigger, r.label) for r in loading_rules] == [
        (SlotState.VALIDATING, Trigger.VALIDATED, "passed")
    ]


def test_idle_expiry_guard() -> None:
    config = SlotConfig("s", idle_timeout=300.0)
    data = SlotData(model="alpha", used_at=0.0, last_use=5, seen=True)
    quiet = health(alpha=5)
    assert idle_expired(data, config, Observed(quiet, at=300.0))
    assert not idle_expired(data, config, Observed(quiet, at=299.9))
    assert not idle_expired(data, config, Observed(health(alpha=6), at=900.0))  # used since
    assert not idle_expired(SlotData(model="alpha", used_at=0.0), config, Observed(quiet, 900.0))
    assert not idle_expired(
        SlotData(model="alpha", used_at=0.0, last_use=5, seen=True, in_use=1),
        config,
        Observed(quiet, at=900.0),
    )
    busy = Health(status="ok", models=(LoadedModel("alpha", last_use=5, busy=True),))
    assert not idle_expired(data, config, Observed(busy, at=900.0))
    for never in (0.0, None):
        assert not idle_expired(data, SlotConfig("s", idle_timeout=never), Observed(quiet, 900.0))


def test_model_gone_ignores_observations_older_than_the_load() -> None:
    data = SlotData(model="alpha", loaded_seq=7)
    assert not model_gone(data, SlotConfig("s"), Observed(health(), at=0.0, seq=6))
    assert model_gone(data, SlotConfig("s"), Observed(health(), at=0.0, seq=8))
    assert not model_gone(data, SlotConfig("s"), Observed(health(alpha=1), at=0.0, seq=8))


entries = st.sampled_from(list(ENTRIES.values()))
failures = st.one_of(
    st.none(),
    st.sampled_from([k for k in PreloadError if k.is_validation]).map(
        lambda k: Failure(k, k.name.lower())
    ),
)
healths = strategies.healths(NAMES)


class RulebookMachine(RuleBasedStateMachine):
    """Every event, in every state, in any order; the rulebook's promises hold throughout."""

    def __init__(self) -> None:
        super().__init__()
        self.book = Rulebook()
        self.slot = SlotMachine(SlotConfig("s", idle_timeout=10.0))
        self.book.attach(self.slot)
        self.now = 0.0
        self.seq = 0
        self.loads_in_flight = 0
        self.validation_failed_for: set[str] = set()

    def feed(self, event: Event) -> None:
        source = self.slot.state
        step = self.book.step(self.slot, event)
        assert step.source is source
        assert self.slot.state in SlotState
        if step.outcome is not Outcome.TAKEN:
            assert self.slot.state is source and not step.effects and step.reason
            return
        # error is left only by an explicit command
        if source is SlotState.ERROR and self.slot.state is not SlotState.ERROR:
            assert event.trigger.is_command, event
        assert step.rule is not None
        for effect in step.effects:
            assert isinstance(effect, step.rule.effects), (effect, step.rule)
            if isinstance(effect, CallLoad):
                # no /load on any path from a failed validation
                assert isinstance(event, Validated) and event.failure is None
                assert effect.entry == event.entry
                assert self.loads_in_flight == 0, "two loads in flight for one slot"
                self.loads_in_flight += 1
            elif isinstance(effect, CallUnload):
                assert isinstance(effect.model, str) and effect.model.strip()
            else:
                assert isinstance(effect, StartValidation)
        if isinstance(event, LoadSucceeded | LoadFailed | LoadTimedOut):
            self.loads_in_flight -= 1
        if isinstance(event, Validated) and event.failure is not None:
            assert self.slot.state in (SlotState.ERROR, SlotState.LOADED)
            assert self.slot.data.error == event.failure

    @invariant()
    def loading_means_one_load_in_flight(self) -> None:
        assert self.loads_in_flight == (1 if self.slot.state is SlotState.LOADING else 0)

    @invariant()
    def loaded_means_a_model(self) -> None:
        data = self.slot.data
        if self.slot.state is SlotState.LOADED:
            assert data.model is not None
        if self.slot.state in (SlotState.IDLE, SlotState.ERROR):
            assert data.model is None and data.target is None
        assert data.in_use >= 0

    @rule(entry=entries)
    def load(self, entry: ModelEntry) -> None:
        self.feed(Load(entry))

    @rule()
    def unload(self) -> None:
        self.feed(Unload())

    @rule()
    def reset(self) -> None:
        self.feed(Reset())

    @rule(failure=failures, entry=entries)
    def validated(self, failure: Failure | None, entry: ModelEntry) -> None:
        target = self.slot.data.target
        # Results carry the entry that was validated; a mismatching one is a stale result.
        self.feed(Validated(target if target is not None else entry, failure))

    @precondition(lambda self: self.slot.state is SlotState.LOADING)
    @rule(outcome=st.sampled_from(["ok", "failed", "timeout"]))
    def load_answered(self, outcome: str) -> None:
        target = self.slot.data.target
        assert target is not None
        if outcome == "ok":
            self.seq += 1
            self.feed(LoadSucceeded(target.name, self.now, self.seq))
        elif outcome == "failed":
            self.feed(LoadFailed(Failure(PreloadError.LOAD_FAILED, "500")))
        else:
            self.feed(LoadTimedOut(Failure(PreloadError.LOAD_TIMEOUT, "120 s")))

    @rule(ok=st.booleans())
    def unload_answered(self, ok: bool) -> None:
        if ok:
            self.feed(Unloaded(self.slot.data.model or "alpha"))
        else:
            self.feed(UnloadFailed(Failure(PreloadError.UNLOAD_FAILED, "500")))

    @rule(h=healths, advance=st.floats(0.0, 20.0))
    def observed(self, h: Health, advance: float) -> None:
        self.now += advance
        self.seq += 1
        self.feed(Observed(h, self.now, self.seq))

    @rule(delta=st.sampled_from([1, -1]))
    def use(self, delta: int) -> None:
        self.feed(UseChanged(delta, self.now))


TestRulebook = RulebookMachine.TestCase
TestRulebook.settings = settings(max_examples=examples(300), stateful_step_count=40)


@pytest.mark.parametrize("state", list(SlotState))
def test_postponed_commands_are_exactly_the_busy_states(state: SlotState) -> None:
    for trigger in (Trigger.LOAD, Trigger.UNLOAD, Trigger.RESET):
        assert ((state, trigger) in POSTPONED) == (not state.settled)


@given(strategies.slot_configs(), strategies.healths())
def test_strategies_build_valid_values(config: SlotConfig, h: Health) -> None:
    assert config.load_timeout > 0
    assert len(h.names) == len(h.models)


def test_a_load_evicted_before_the_slot_settled_is_reported() -> None:
    book = Rulebook()
    entry = ENTRIES["alpha"]
    for seen_missing_at, expected in [(5, SlotState.IDLE), (2, SlotState.LOADED)]:
        slot = SlotMachine(SlotConfig("s"))
        book.attach(slot)
        book.step(slot, Load(entry))
        book.step(slot, Validated(entry, None))
        book.step(slot, Observed(health(), at=0.0, seq=seen_missing_at))
        book.step(slot, LoadSucceeded("alpha", at=0.0, seq=3))  # answered before reading 5
        assert slot.state is expected
        if expected is SlotState.IDLE:
            assert slot.data.error is not None and slot.data.error.kind is PreloadError.EVICTED
