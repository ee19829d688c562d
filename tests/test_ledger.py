"""The residency ledger on its own, against a simulated server (ADR-0007 §4).

A Hypothesis state machine drives a :class:`Ledger` the way the actors and the
courier do — slots load, give up, unload; requests are answered in any order,
some lost, some refused at connect time; readings arrive — against a model of
the server that executes each request when it is answered.  After every step:
every model the server holds because of us is in the ledger (invariant 1),
and the ledger's own invariants hold.  At the end, once every request is
answered and two readings have gone by, the ledger owes nothing and the server
holds exactly what the slots hold.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from slotfsm import Health, LoadedModel, ModelInUseError
from slotfsm.ledger import Answer, Ledger, Ticket

SLOTS = ("a", "b")
NAMES = ("m1", "m2", "m3")


def reading(names: set[str]) -> Health:
    return Health(status="ok", models=tuple(LoadedModel(n, last_use=0) for n in sorted(names)))


class LedgerAgainstAServer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sequence = itertools.count(1).__next__
        self.ledger = Ledger(self.sequence)
        self.server: set[str] = set()
        self.in_flight: list[Ticket] = []
        self.waiting: dict[str, Ticket] = {}  # the request each slot waits for
        self.holds: dict[str, str] = {}  # what each slot holds

    # -- what slots do -----------------------------------------------------------

    @rule(slot=st.sampled_from(SLOTS), name=st.sampled_from(NAMES))
    def load(self, slot: str, name: str) -> None:
        if slot in self.waiting or slot in self.holds:
            return
        try:
            self.ledger.check_claim(slot, name)
        except ModelInUseError:
            return
        self.ledger.sync(slot, loading=name)
        ticket = self.ledger.sent(name, slot, "load")
        self.in_flight.append(ticket)
        self.waiting[slot] = ticket

    @rule(slot=st.sampled_from(SLOTS))
    def give_up(self, slot: str) -> None:
        """The load timer fires, or a cancel: the slot stops waiting."""
        ticket = self.waiting.get(slot)
        if ticket is None or ticket.kind != "load":
            return
        del self.waiting[slot]
        self.ledger.sync(slot)
        self.ledger.abandoned(ticket)

    @rule(slot=st.sampled_from(SLOTS))
    def unload(self, slot: str) -> None:
        name = self.holds.get(slot)
        if name is None or slot in self.waiting:
            return
        self.ledger.sync(slot, leaving=name)
        ticket = self.ledger.sent(name, slot, "unload")
        self.in_flight.append(ticket)
        self.waiting[slot] = ticket

    # -- what the server does --------------------------------------------------------

    @precondition(lambda self: bool(self.in_flight))
    @rule(
        data=st.data(),
        fate=st.sampled_from(["answer", "lost-done", "lost-not-done", "refused", "never-sent"]),
    )
    def answer(self, data: st.DataObject, fate: str) -> None:
        ticket = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        if fate == "never-sent":
            answer = Answer.NEVER_SENT
        elif fate == "refused":
            answer = Answer.REFUSED
        else:
            executed = fate != "lost-not-done"
            was_there = ticket.name in self.server
            if executed and ticket.kind == "load":
                self.server.add(ticket.name)
            elif executed:
                self.server.discard(ticket.name)
            if fate.startswith("lost"):
                answer = Answer.LOST
            elif ticket.kind == "load":
                answer = Answer.DONE
            else:
                answer = Answer.DONE if was_there else Answer.NOT_LOADED
        if self.ledger.answered(ticket, answer):
            self.clean_up(ticket.name)
        self.settle(ticket, answer)

    def settle(self, ticket: Ticket, answer: Answer) -> None:
        """What the slot that still waits for ``ticket`` makes of its answer."""
        slot = ticket.slot
        if slot is None or self.waiting.get(slot) is not ticket:
            return
        del self.waiting[slot]
        if ticket.kind == "load" and answer is Answer.DONE:
            self.holds[slot] = ticket.name
            self.ledger.sync(slot, held=ticket.name)
        elif ticket.kind == "load":
            self.ledger.sync(slot)
        elif answer in (Answer.DONE, Answer.NOT_LOADED):
            del self.holds[slot]
            self.ledger.sync(slot)
        else:  # a failed unload keeps the model the slot's
            self.ledger.sync(slot, held=ticket.name)

    def clean_up(self, name: str) -> None:
        entry = self.ledger.get(name)
        if entry is None or entry.owner is not None or entry.cleaning:
            return
        ticket = self.ledger.sent(name, None, "unload")
        ticket.abandoned = True
        self.in_flight.append(ticket)

    @rule()
    def observe(self) -> None:
        seq = self.sequence()
        for name in self.ledger.observed(reading(self.server), seq):
            self.clean_up(name)
        for slot, name in list(self.holds.items()):  # the slot's rule: its model is gone
            if name not in self.server and slot not in self.waiting:
                del self.holds[slot]
                self.ledger.sync(slot)

    @rule(name=st.sampled_from(NAMES))
    def evicted_by_someone_else(self, name: str) -> None:
        self.server.discard(name)

    # -- the promises -----------------------------------------------------------------

    @invariant()
    def everything_on_the_server_is_in_the_ledger(self) -> None:
        self.ledger.check()
        for name in self.server:
            assert name in self.ledger, f"{name} is on the server and not in the ledger"

    @invariant()
    def one_owner_per_name_and_snapshots_agree(self) -> None:
        for slot, name in self.holds.items():
            assert self.ledger.owner_of(name) == slot

    def teardown(self) -> None:
        """At quiescence, one reading cleans up, the next finds nothing owed.

        Every request is answered (in order, none lost), then a reading: what
        it finds is unloaded; one more reading and the ledger owes nothing,
        and the server holds exactly what the slots hold.
        """
        for _ in range(3):
            while self.in_flight:
                ticket = self.in_flight.pop(0)
                was_there = ticket.name in self.server
                if ticket.kind == "load":
                    self.server.add(ticket.name)
                    answer = Answer.DONE
                else:
                    self.server.discard(ticket.name)
                    answer = Answer.DONE if was_there else Answer.NOT_LOADED
                if self.ledger.answered(ticket, answer):
                    self.clean_up(ticket.name)
                self.settle(ticket, answer)
            self.observe()
        assert not self.in_flight
        assert self.ledger.owed() == (), self.ledger.entries()
        assert self.server == set(self.holds.values())


TestLedgerAgainstAServer = LedgerAgainstAServer.TestCase


def test_two_abandoned_loads_are_two_arrivals_and_both_are_cleaned_up() -> None:
    ledger = Ledger(itertools.count(1).__next__)
    tickets = []
    for _ in range(2):
        ledger.sync("a", loading="m")
        tickets.append(ledger.sent("m", "a", "load"))
        ledger.sync("a")
        ledger.abandoned(tickets[-1])
    entry = ledger.get("m")
    assert entry is not None and entry.arrivals == 2 and ledger.cleanups_of("a") == ("m",)
    assert ledger.answered(tickets[0], Answer.DONE)  # landed with no owner: clean it up
    cleanup = ledger.sent("m", None, "unload")
    # the second arrival is still in flight: a 404 (not loaded yet) proves nothing
    ledger.answered(cleanup, Answer.NOT_LOADED)
    assert "m" in ledger and entry.arrivals == 1
    assert ledger.answered(tickets[1], Answer.DONE)
    cleanup = ledger.sent("m", None, "unload")
    ledger.answered(cleanup, Answer.DONE)
    assert "m" not in ledger


def test_a_connection_refused_before_sending_leaves_nothing_behind() -> None:
    ledger = Ledger(itertools.count(1).__next__)
    ledger.sync("a", loading="m")
    ticket = ledger.sent("m", "a", "load")
    ledger.answered(ticket, Answer.NEVER_SENT)
    ledger.sync("a")
    assert "m" not in ledger
    ledger.check_claim("b", "m")  # free for other slots


def test_an_unload_answered_404_with_no_load_pending_is_proof() -> None:
    ledger = Ledger(itertools.count(1).__next__)
    ledger.sync("a", held="m")
    ledger.sync("a", leaving="m")
    ticket = ledger.sent("m", "a", "unload")
    ledger.answered(ticket, Answer.NOT_LOADED)
    ledger.sync("a")
    assert "m" not in ledger


def test_a_leaving_model_stays_its_owners_until_the_unload_answers() -> None:
    ledger = Ledger(itertools.count(1).__next__)
    ledger.sync("a", held="old")
    ledger.sync("a", loading="new", leaving="old")
    ticket = ledger.sent("old", "a", "unload")
    ledger.sync("a")  # the slot gave up (its load timer fired) while the unload runs
    ledger.abandoned(ticket)
    assert ledger.owner_of("old") == "a"
    with pytest.raises(ModelInUseError):
        ledger.check_claim("b", "old")
    ledger.answered(ticket, Answer.REFUSED)  # it stayed: nobody manages it now
    assert ledger.owner_of("old") is None and ledger.cleanups_of("a") == ("old",)


def test_records_survive_a_restart_as_owed_names() -> None:
    ledger = Ledger(itertools.count(1).__next__)
    ledger.sync("a", loading="m")
    ledger.sent("m", "a", "load")
    ledger.sync("a")
    records = ledger.records()
    assert records == {"m": {"origin": "a", "arrivals": 0, "stray": True}}
    again = Ledger(itertools.count(1).__next__)
    again.restore([("m", "a", True, False)])
    assert again.cleanups_of("a") == ("m",)
    # a reading proves nothing until one of our loads has been answered (loads are serial)
    assert again.observed(reading(set()), 10) == ()
    assert "m" in again
