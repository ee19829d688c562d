"""The one oracle of the random harnesses: what must hold between a controller and its server.

Used after every step and at quiescence by the program property test
(tests/test_ownership.py), the storm (tests/faults/storm.py) and the
command-program test (tests/test_controller_property.py).  Reads only public
API: snapshots, ``ctl.ledger`` and the fake's view of what it holds.
"""

from __future__ import annotations

from collections.abc import Collection

import anyio

from slotfsm import Controller
from slotfsm.testing import FakeLemonade


def check_step(ctl: Controller, fake: FakeLemonade, ours: Collection[str]) -> None:
    """After any step (ADR-0007 §4).

    1. Every model the server holds because of us (``ours``: the names this
       controller may load) is in the ledger.
    2. A name has at most one owning slot, and a slot's snapshot model is owned
       by that slot.
    3. The ledger's own invariants hold.
    """
    ledger = ctl.ledger
    ledger.check()
    for name in fake.loaded_models():
        if name in ours:
            assert name in ledger, (
                f"{name} is on the server and not in the ledger",
                ledger.entries(),
                {slot: (s.state, s.model, s.target) for slot, s in ctl.snapshots().items()},
                [(r.route, r.body, r.status) for r in fake.requests if r.route != "health"],
            )
    for slot, snap in ctl.snapshots().items():
        if snap.model is not None:
            owner = ledger.owner_of(snap.model)
            assert owner == slot, f"{slot} holds {snap.model}, the ledger says {owner}"
        for name in snap.cleanups:
            assert ledger.owner_of(name) is None, f"{slot} names {name} to clean, yet it is owned"


def held(ctl: Controller) -> set[str]:
    """The models the slots' snapshots hold."""
    return {s.model for s in ctl.snapshots().values() if s.model is not None}


def unknowable(ctl: Controller) -> set[str]:
    """Loads an earlier controller left in flight that have not shown up (nor failed visibly).

    Their answer went with that controller; only a sighting, or one of our
    loads answered after them (the server serves loads one at a time), can
    settle them, so they may stay owed at quiescence (ADR-0007 §4).
    """
    return {n for n, e in ctl.ledger.entries().items() if e.restored and e.owner is None}


async def check_quiescent(ctl: Controller, fake: FakeLemonade, ours: Collection[str]) -> None:
    """Once nothing is in flight: one poll, then the server holds what slots hold plus the
    clean-ups the ledger owes; one more poll later, the clean-ups are gone (all but the
    :func:`unknowable`, which are not on the server)."""
    await ctl.refresh()
    await settled(ctl, fake)
    check_step(ctl, fake, ours)
    on_server = {n for n in fake.loaded_models() if n in ours}
    owed = set(ctl.ledger.owed())
    assert on_server <= held(ctl) | owed, (on_server, held(ctl), owed)
    assert not on_server & unknowable(ctl)  # a sighting settles them
    assert held(ctl) <= on_server, (held(ctl), on_server)
    await ctl.refresh()
    await settled(ctl, fake)
    check_step(ctl, fake, ours)
    left = set(ctl.ledger.owed()) - unknowable(ctl)
    assert not left, (left, dict(ctl.ledger.entries()), ctl.snapshots())
    on_server = {n for n in fake.loaded_models() if n in ours}
    assert on_server == held(ctl), (on_server, ctl.snapshots(), ctl.ledger.entries())


async def settled(ctl: Controller, fake: FakeLemonade) -> None:
    """Wait until every request of ours is answered and its answer is in the ledger.

    A reading starts its clean-ups in the background: they must have gone out
    and come back before the next reading can be judged.
    """
    while True:
        await anyio.wait_all_tasks_blocked()
        if not any(e.pending for e in ctl.ledger.entries().values()):
            return
        await fake.wait_changed()


async def fake_settled(fake: FakeLemonade) -> None:
    """Wait until the fake has answered every request it received."""
    while any(r.done_at is None and not r.dropped for r in fake.requests):
        await fake.wait_changed()
