"""The shared machine's bargain with ``transitions``, checked so an upgrade that breaks it fails.

One ``transitions.Machine`` runs every slot, and it is told not to bind its
convenience methods (``load()``, ``may_load()``, ``is_IDLE()`` ... one per
trigger and state) onto each slot by overriding a private method of
``Machine``; its transitions repeat ``Transition.execute`` without the
callback lists the rulebook leaves empty.  ``pyproject.toml`` pins
``transitions`` below its next minor release; these tests are what a bump of
that pin must pass.
"""

from __future__ import annotations

import gc
import tracemalloc

from slotfsm.config import SlotConfig
from slotfsm.events import Reset, Trigger
from slotfsm.rulebook import Rulebook, SlotMachine
from slotfsm.states import SlotState

SLOTS = 1000
BUDGET_PER_SLOT = 2 * 1024
"""Bytes per attached slot.  Today about 250; with transitions' per-slot
methods bound it is about 9,000, most of the 16 KiB an idle slot may cost."""


def convenience_names() -> set[str]:
    """Every name ``transitions`` would bind onto a model of the rulebook's machine."""
    names = {"trigger", "may_trigger"}
    for trigger in Trigger:
        names |= {trigger.value, f"may_{trigger.value}"}
    for state in SlotState:
        names |= {f"is_{state.name}", f"is_{state.value}", f"to_{state.name}", f"to_{state.value}"}
    return names


def test_an_attached_slot_gets_no_convenience_methods_and_still_runs() -> None:
    book = Rulebook()
    slot = SlotMachine(SlotConfig("chat"))
    book.attach(slot, SlotState.ERROR)

    bound = sorted(name for name in convenience_names() if hasattr(slot, name))
    assert bound == [], (
        "transitions now binds methods onto every slot: the shared machine's override of "
        "Machine._checked_assignment no longer takes effect with this transitions release"
    )
    assert slot.state is SlotState.ERROR
    step = book.step(slot, Reset())
    assert (step.source, step.dest, slot.state) == (SlotState.ERROR, SlotState.IDLE, SlotState.IDLE)


def test_attached_slots_stay_within_the_memory_budget() -> None:
    book = Rulebook()
    config = SlotConfig("chat")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        slots = [SlotMachine(config) for _ in range(SLOTS)]
        for slot in slots:
            book.attach(slot)
        gc.collect()
        per_slot = (tracemalloc.get_traced_memory()[0] - before) / SLOTS
    finally:
        tracemalloc.stop()
    assert all(slot.state is SlotState.IDLE for slot in slots)
    assert per_slot <= BUDGET_PER_SLOT, f"{per_slot:,.0f} bytes per attached slot"


def test_a_stock_transition_runs_what_the_rulebook_copy_runs_in_the_same_order() -> None:
    """The rulebook's transitions repeat ``Transition.execute`` minus its empty callback lists.

    What they keep — conditions in order (stopping at the first false),
    ``before``, the state change, ``after`` — must still be what the stock
    one does, in that order.
    """
    from transitions import Machine

    seen: list[str] = []

    class Model:
        state: str

    def note(what: str, result: bool = True) -> object:
        def callback(event_data: object) -> bool:
            seen.append(f"{what} in {model.state}")
            return result

        return callback

    model = Model()
    machine = Machine(model=None, states=["a", "b"], initial="a", send_event=True)
    machine.add_model(model)
    machine.add_transition("go", "a", "b", conditions=[note("no", False)], before=[note("unused")])
    machine.add_transition(
        "go",
        "a",
        "b",
        conditions=[note("yes"), note("yes again")],
        before=[note("before")],
        after=[note("after")],
    )
    assert machine.events["go"].trigger(model)
    assert seen == ["no in a", "yes in a", "yes again in a", "before in a", "after in b"]
