"""Cost grows with what changed, not with the number of slots (issue 13), and stays correct.

The reconcile pass tells a reading only to the slots it can change; these
tests hold that filter to the rulebook (a slot not told is one the rulebook
would have left exactly as it was) and hold the costs to their complexity:
counts where they can be counted, otherwise ratios of timings with generous
margins, never an absolute time.  A timing is the least of several runs:
other work on the machine only ever adds time.  The figures themselves are
printed by ``tests/bench/bench_scale.py``.
"""

from __future__ import annotations

import gc
import itertools
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import hypothesis.strategies as st
import pytest
from anyio.abc import TaskGroup
from hypothesis import given, settings
from kit import examples

from slotfsm import (
    Controller,
    Health,
    LoadedModel,
    ModelEntry,
    ModelInUseError,
    SlotConfig,
    SlotState,
)
from slotfsm.actor import SlotActor
from slotfsm.courier import Courier
from slotfsm.errors import ControllerClosedError
from slotfsm.events import Event, Observed, Reset
from slotfsm.ledger import Answer, Ledger, Phase, Ticket
from slotfsm.lemonade import LemonadeClient
from slotfsm.preload import FingerprintCache, validate_sync
from slotfsm.rulebook import Rulebook, SlotMachine
from slotfsm.rules import has_news
from slotfsm.states import SlotData
from slotfsm.testing import FakeLemonade, FakeModel
from slotfsm.testing.files import write_model

NAMES = ("alpha", "beta", "gamma", "delta")
ENTRIES = {
    name: ModelEntry(name=name, path=f"/models/{name}.gguf", sha256=f"{i:064x}", size=100)
    for i, name in enumerate(NAMES)
}

# -- the filter, against the rulebook ---------------------------------------------------

small_times = st.integers(0, 40).map(float) | st.floats(0, 40, allow_nan=False)
uses = st.none() | st.integers(0, 3)
ROWS = {
    name: st.builds(
        LoadedModel, name=st.just(name), last_use=uses, busy=st.sampled_from([False, False, True])
    )
    for name in NAMES
}
LEANING_TRUE = st.sampled_from([True, True, False])


@st.composite
def slots_and_readings(draw: st.DrawFn) -> tuple[SlotState, SlotData, SlotConfig, Observed]:
    """A slot and a reading, drawn near where the rules decide: the slot's model often
    listed with the ``last_use`` it knows, and ``used_at`` often exactly ``idle_timeout``
    (or a second either side of it) before the reading."""
    state = draw(st.sampled_from([*SlotState, SlotState.LOADED, SlotState.LOADED]))
    config = SlotConfig("s", idle_timeout=draw(st.sampled_from([None, 0.0, 5.0, 10.0])))
    model = draw(st.sampled_from(NAMES) | st.none())
    target = draw(st.none() | st.sampled_from(list(ENTRIES.values())))
    rows = {name: draw(ROWS[name]) for name in draw(st.lists(st.sampled_from(NAMES)))}
    for name in (model, target.name if target else None):
        if name is not None and draw(LEANING_TRUE):
            rows[name] = draw(ROWS[name])
    listed = rows.get(model) if model is not None else None
    last_use = listed.last_use if listed is not None and draw(st.booleans()) else draw(uses)
    at = draw(small_times)
    due = at - (config.idle_timeout or 5.0)
    used_at = draw(st.sampled_from([due, due - 1, due + 1]) | st.none() | small_times)
    data = SlotData(
        model=model,
        target=target,
        last_use=last_use,
        seen=draw(LEANING_TRUE),
        used_at=used_at,
        loaded_seq=draw(st.integers(0, 6)),
        gone_seq=draw(st.integers(0, 6)),
        in_use=draw(st.sampled_from([0, 0, 0, 1, 2])),
    )
    health = Health(status="ok", models=tuple(rows.values()))
    return state, data, config, Observed(health, at, draw(st.integers(0, 6)))


BOOK = Rulebook()


@settings(max_examples=examples(2000))
@given(case=slots_and_readings())
def test_a_slot_not_told_is_one_the_reading_would_not_change(
    case: tuple[SlotState, SlotData, SlotConfig, Observed],
) -> None:
    """Filtered delivery and full delivery leave every slot in the same state, with the same data.

    The idle rule stays the rulebook's (ADR-0007 §2): the boundary ``at - used_at ==
    idle_timeout`` is drawn often, and a first sighting or a changed ``last_use`` is news.
    """
    state, data, config, observed = case
    slot = SlotMachine(config, data)
    BOOK.attach(slot, state)
    told = has_news(state, data, config, observed)
    BOOK.step(slot, observed)
    BOOK.detach(slot)
    if not told:
        assert (slot.state, slot.data) == (state, data)


def test_the_filter_skips_a_slot_with_nothing_new_and_tells_one_with_news() -> None:
    """The filter is not trivially "tell everyone": an unchanged row, not yet idle, is skipped."""
    config = SlotConfig("s", idle_timeout=10.0)
    data = SlotData(model="alpha", last_use=7, seen=True, used_at=100.0, loaded_seq=1)

    def reading(at: float, last_use: int = 7, busy: bool = False) -> Observed:
        row = LoadedModel("alpha", last_use=last_use, busy=busy)
        return Observed(Health(status="ok", models=(row,)), at, seq=5)

    news = has_news
    assert not news(SlotState.LOADED, data, config, reading(at=109.0))
    assert news(SlotState.LOADED, data, config, reading(at=110.0))  # idle for idle_timeout
    assert news(SlotState.LOADED, data, config, reading(at=101.0, last_use=8))
    assert news(SlotState.LOADED, data, config, reading(at=101.0, busy=True))
    assert news(SlotState.LOADED, attrs.evolve(data, seen=False), config, reading(at=101.0))
    gone = Observed(Health(status="ok"), 101.0, seq=5)
    assert news(SlotState.LOADED, data, config, gone)
    assert not news(SlotState.LOADED, attrs.evolve(data, loaded_seq=5), config, gone)
    assert not news(SlotState.IDLE, data, config, gone)


# -- the ledger's indexes ----------------------------------------------------------------

OWNERS = ("s0", "s1")
ledger_steps = st.one_of(
    st.tuples(
        st.just("sync"),
        st.sampled_from(OWNERS),
        st.none() | st.sampled_from(NAMES),
        st.none() | st.sampled_from(NAMES),
        st.none() | st.sampled_from(NAMES),
    ),
    st.tuples(
        st.just("sent"),
        st.sampled_from(NAMES),
        st.none() | st.sampled_from(OWNERS),
        st.sampled_from(["load", "unload"]),
    ),
    st.tuples(st.just("answered"), st.integers(0, 7), st.sampled_from(Answer)),
    st.tuples(st.just("abandoned"), st.integers(0, 7)),
    st.tuples(st.just("observed"), st.sets(st.sampled_from(NAMES))),
    st.tuples(
        st.just("restore"),
        st.sampled_from(NAMES),
        st.none() | st.sampled_from(OWNERS),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.just("reserve"), st.sampled_from(OWNERS), st.sampled_from(NAMES)),
    st.tuples(st.just("release"), st.sampled_from(OWNERS), st.sampled_from(NAMES)),
)


def brute_force(ledger: Ledger) -> Iterator[tuple[object, ...]]:
    """What the indexed readers must answer, computed from every entry."""
    entries = list(ledger.entries().values())
    for slot in OWNERS:
        for phase in (None, *Phase):
            owned = tuple(
                e.name for e in entries if e.owner == slot and (phase is None or e.phase is phase)
            )
            yield ("owned_by", slot, phase, ledger.owned_by(slot, phase), owned)
        cleanups = tuple(e.name for e in entries if e.owed and e.origin == slot)
        yield ("cleanups_of", slot, ledger.cleanups_of(slot), cleanups)
    yield ("owed", ledger.owed(), tuple(e.name for e in entries if e.owed))
    owners = {e.owner for e in entries if e.owner is not None}
    yield ("owners", set(ledger.owners()), owners)


@settings(max_examples=examples(300))
@given(program=st.lists(ledger_steps, max_size=40))
def test_the_ledger_indexes_answer_what_a_full_scan_would(program: list[tuple[Any, ...]]) -> None:
    """Random bookkeeping (syncs, requests and their answers, readings, restores, claims):
    after every step the indexes agree with the entries, and every reader answers
    what a walk over all entries would, in the same order."""
    sequence = iter(range(1, 10_000)).__next__
    ledger = Ledger(sequence)
    tickets: list[Ticket] = []
    reserved: list[tuple[str, str]] = []
    for kind, *args in program:
        try:
            if kind == "sync":
                slot, held, loading, leaving = args
                ledger.sync(slot, held=held, loading=loading, leaving=leaving)
            elif kind == "sent":
                tickets.append(ledger.sent(*args))
            elif kind == "answered" and args[0] < len(tickets):
                ticket = tickets.pop(args[0])
                ledger.answered(ticket, args[1])
            elif kind == "abandoned" and args[0] < len(tickets):
                ledger.abandoned(tickets[args[0]])
            elif kind == "observed":
                rows = tuple(LoadedModel(name) for name in sorted(args[0]))
                ledger.observed(Health(status="ok", models=rows), sequence())
            elif kind == "restore":
                ledger.restore([tuple(args)])
            elif kind == "reserve":
                ledger.reserve(*args)
                reserved.append(tuple(args))
            elif kind == "release" and tuple(args) in reserved:
                reserved.remove(tuple(args))
                ledger.release(*args)
        except ModelInUseError:
            pass
        ledger.check()
        for *_, indexed, scanned in brute_force(ledger):
            assert indexed == scanned, (kind, args)
        assert set(ledger.claimants()) == {slot for slot, _ in reserved}


# -- complexity --------------------------------------------------------------------------


def least_time(runs: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


async def least_atime(runs: int, action: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await action()
        times.append(time.perf_counter() - start)
    return min(times)


class Counted(SlotMachine):
    """A slot that counts how often it is compared with another (a list search does)."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        Counted.comparisons += 1
        return self is other

    __hash__ = SlotMachine.__hash__


def test_attaching_and_detaching_slots_compares_none_of_them() -> None:
    """Start-up and shutdown are linear: no search through the attached slots (goal 3)."""
    book = Rulebook()
    slots = [Counted(SlotConfig(f"s{i}")) for i in range(500)]
    Counted.comparisons = 0
    for slot in slots:
        book.attach(slot)
    for slot in reversed(slots):
        book.detach(slot)
    assert Counted.comparisons == 0
    book.attach(slots[0], SlotState.ERROR)  # it can come back, in any state
    assert slots[0].state is SlotState.ERROR
    with pytest.raises(ValueError):
        book.detach(slots[1])


def test_the_ledger_answers_for_one_slot_in_time_independent_of_its_size() -> None:
    """``owned_by``, ``cleanups_of`` and ``sync`` cost what the slot has (goal 1, 2)."""

    def ledger_of(size: int) -> Ledger:
        ledger = Ledger(iter(range(1, 1 << 30)).__next__)
        for i in range(size):
            ledger.sync(f"s{i}", held=f"m{i}")
        return ledger

    def cost(ledger: Ledger) -> float:
        def calls() -> None:
            for _ in range(200):
                ledger.owned_by("s0", Phase.LEAVING)
                ledger.cleanups_of("s0")
                ledger.sync("s0", held="m0")

        return least_time(7, calls)

    small, big = cost(ledger_of(10)), cost(ledger_of(5000))
    assert big < 3 * small, f"{big / small:.1f}x slower with 500 times the entries"


ObservedCount = dict[str, int]


@pytest.fixture
def observed_by(monkeypatch: pytest.MonkeyPatch) -> ObservedCount:
    """How many readings each slot was told (every ``tell`` of an ``Observed``)."""
    counts: ObservedCount = {}
    tell = SlotActor.tell

    def counting(self: SlotActor, event: Event, handled: Callable[[], None] | None = None) -> None:
        if isinstance(event, Observed):
            counts[self.name] = counts.get(self.name, 0) + 1
        tell(self, event, handled)

    monkeypatch.setattr(SlotActor, "tell", counting)
    return counts


def controller_on(
    fake: FakeLemonade, entries: list[ModelEntry], slots: int, **options: Any
) -> Controller:
    return Controller(
        lemonade_url="http://lemonade",
        registry=entries,
        slots=[SlotConfig(f"s{i}", idle_timeout=3600) for i in range(slots)],
        transport=fake.transport(),
        poll_interval=3600,
        **options,
    )


def shared_file_registry(directory: Path, count: int) -> list[ModelEntry]:
    """``m0``... all naming one small file: validated once, then answered by the cache."""
    entry = write_model(directory, "model")
    return [attrs.evolve(entry, name=f"m{i}") for i in range(count)]


@pytest.mark.anyio
async def test_a_reading_is_told_only_to_the_slots_it_changes(
    tmp_path: Path, observed_by: ObservedCount
) -> None:
    """Among 200 loaded slots, a pass tells 0 with nothing new, 1 per changed row (goal 1)."""
    entries = shared_file_registry(tmp_path, 200)
    fake = FakeLemonade(
        [FakeModel.for_file(e.name, e.path) for e in entries], max_models={"llm": -1}
    )
    async with controller_on(fake, entries, 200) as ctl:
        async with anyio.create_task_group() as group:
            for i in range(200):
                group.start_soon(ctl.load, f"s{i}", f"m{i}")
        await ctl.refresh()  # every model seen once
        observed_by.clear()
        await ctl.refresh()
        assert observed_by == {}
        fake.mark_used("m7")
        await ctl.refresh()
        assert observed_by == {"s7": 1}
        observed_by.clear()
        async with httpx.AsyncClient(transport=fake.transport(), base_url="http://x") as http:
            await http.post("/api/v1/unload", json={"model_name": "m9"})  # behind its back
        await ctl.refresh()
        assert observed_by == {"s9": 1}
        assert ctl.snapshot("s9").state is SlotState.IDLE  # told, and evicted
        assert ctl.snapshot("s8").state is SlotState.LOADED
        told = ctl.idle_watcher.told
        await ctl.refresh()
        assert ctl.idle_watcher.told == told  # the public count agrees: nothing new, no one told


async def pass_and_cycle(directory: Path, slots: int) -> tuple[float, float]:
    """(a pass, a load/unload cycle) among ``slots`` slots, 10 of them loaded."""
    entries = shared_file_registry(directory, slots)
    fake = FakeLemonade(
        [FakeModel.for_file(e.name, e.path) for e in entries], max_models={"llm": -1}
    )
    async with controller_on(fake, entries, slots) as ctl:
        for i in range(10):
            await ctl.load(f"s{i}", f"m{i}")
        await ctl.refresh()

        async def cycle() -> None:
            await ctl.load(f"s{slots - 1}", f"m{slots - 1}")
            await ctl.unload(f"s{slots - 1}")

        await cycle()
        return await least_atime(15, ctl.refresh), await least_atime(15, cycle)


@pytest.mark.anyio
async def test_a_pass_and_a_cycle_cost_the_same_among_100_or_1000_slots(tmp_path: Path) -> None:
    """Goals 1 and 2 in small: 10 times the slots, the same rows, under 3 times the cost."""
    small = await pass_and_cycle(tmp_path, 100)
    big = await pass_and_cycle(tmp_path, 1000)
    assert big[0] < 3 * small[0], f"pass: {big[0] / small[0]:.1f}x with 10x the slots"
    assert big[1] < 3 * small[1], f"cycle: {big[1] / small[1]:.1f}x with 10x the slots"


# -- start-up and shutdown ----------------------------------------------------------------


async def start_and_stop(fake: FakeLemonade, entries: list[ModelEntry], slots: int) -> float:
    """The least time, of several, to start a controller of ``slots`` idle slots and stop it.

    The cyclic collector is paused meanwhile: whether one of its full passes
    (over the whole test process) falls inside a run would decide the ratio.
    What a slot costs it is counted in the next test instead.
    """
    times = []
    for _ in range(5):
        ctl = controller_on(fake, entries, slots)
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            async with ctl:
                pass
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return min(times)


@pytest.mark.anyio
async def test_start_up_and_shutdown_are_linear_in_the_slots(tmp_path: Path) -> None:
    """Goal 3 in small: ten times the slots, well under thirty times the cost.

    A search per slot through the slots already there (the machine's model
    list once), or anything else quadratic, makes it a hundred times.
    """
    entries = shared_file_registry(tmp_path, 1)
    fake = FakeLemonade([], max_models={"llm": -1})
    small = await start_and_stop(fake, entries, 200)
    big = await start_and_stop(fake, entries, 2000)
    assert big < 3 * 10 * small, f"{big / small:.1f}x the time with 10x the slots"


def tracked_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


@pytest.mark.anyio
async def test_an_idle_slot_keeps_few_objects_for_the_collector(tmp_path: Path) -> None:
    """Goal 3's cost: every object a slot keeps is walked at every full collection.

    The count per idle slot is the same among 200 or 2000 slots, and within
    its budget: one task, its mailbox, its machine and their parts (about 45
    with anyio 4.16 on asyncio).  A bound method, closure or container made
    per slot and kept shows here.
    """
    entries = shared_file_registry(tmp_path, 1)
    fake = FakeLemonade([], max_models={"llm": -1})
    per_slot = []
    for slots in (200, 2000):
        ctl = controller_on(fake, entries, slots)
        before = tracked_objects()
        async with ctl:
            per_slot.append((tracked_objects() - before) / slots)
    assert per_slot[1] <= per_slot[0] + 0.5, f"{per_slot} objects per slot"
    assert per_slot[1] <= 60, f"{per_slot[1]:.1f} objects per idle slot"


async def passes(entry: ModelEntry) -> None:
    return None


async def no_objection(entry: ModelEntry, config: SlotConfig) -> tuple[None, None]:
    return None, None


async def no_reconcile(cause: str) -> None:
    return None


def bare_actor(client: LemonadeClient, task_group: TaskGroup) -> SlotActor:
    """An actor with a ledger of its own and nothing to load: enough for commands that
    send nothing."""
    ledger = Ledger(itertools.count(1).__next__)
    return SlotActor(
        SlotConfig("s"),
        Rulebook(),
        courier=Courier(client, ledger, lambda: task_group),
        ledger=ledger,
        validate=passes,
        preflight=no_objection,
        reconcile=no_reconcile,
        sequence=itertools.count(1).__next__,
        publish=lambda record: None,
        task_group=task_group,
    )


@pytest.mark.anyio
async def test_a_slot_takes_commands_before_its_task_runs() -> None:
    """An actor is started with ``start_soon``: what it is told first waits in its mailbox."""
    handled: list[str] = []
    async with (
        LemonadeClient("http://lemonade") as client,
        anyio.create_task_group() as group,
    ):
        built = anyio.current_time()
        actor = bare_actor(client, group)
        assert built <= actor.snapshot.since <= anyio.current_time()
        actor.tell(Reset(), lambda: handled.append("first"))
        actor.tell(Reset(), lambda: handled.append("second"))
        group.start_soon(actor.run)
        snap = await actor.command(Reset())
        assert handled == ["first", "second"]
        assert snap.state is SlotState.IDLE
        actor.stop()


@pytest.mark.anyio
async def test_a_slot_stopped_before_its_task_runs_takes_nothing_and_answers_all() -> None:
    """``stop`` before ``run``: the task returns at once; what was sent is answered, not taken."""
    told: list[str] = []
    outcomes: list[str] = []

    async def command() -> None:
        try:
            await actor.command(Reset())
            outcomes.append("taken")
        except ControllerClosedError:
            outcomes.append("closed")

    async with (
        LemonadeClient("http://lemonade") as client,
        anyio.create_task_group() as group,
    ):
        actor = bare_actor(client, group)
        actor.tell(Reset(), lambda: told.append("answered"))
        group.start_soon(command)
        actor.stop()
        group.start_soon(actor.run)
    assert told == ["answered"]  # its callback runs all the same
    assert outcomes == ["closed"]


@pytest.mark.anyio
async def test_memory_per_idle_slot_and_over_many_cycles(tmp_path: Path) -> None:
    """Goal 7 in small: ≤ 16 KiB per idle slot, and load/unload cycles leave nothing behind."""
    entries = shared_file_registry(tmp_path, 1)
    fake = FakeLemonade([FakeModel.for_file("m0", entries[0].path)], max_models={"llm": -1})
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        async with controller_on(fake, entries, 500, transition_ring=64) as ctl:
            gc.collect()
            per_slot = (tracemalloc.get_traced_memory()[0] - before) / 500

            async def cycles(count: int) -> int:
                for _ in range(count):
                    await ctl.load("s0", "m0")
                    await ctl.unload("s0")
                fake.clear_log()
                gc.collect()
                return tracemalloc.get_traced_memory()[0]

            await cycles(40)  # fills the transition ring and every history
            # Two windows: a leak grows both; a one-time resize of some table
            # (the event loop's, the task registry's) lands in one at most.
            marks = [await cycles(1), await cycles(200), await cycles(200)]
            kept = min(marks[1] - marks[0], marks[2] - marks[1], key=abs)
    finally:
        tracemalloc.stop()
    assert per_slot <= 16 * 1024, f"{per_slot / 1024:.1f} KiB per idle slot"
    assert kept < 200 * 100, f"{kept} bytes kept after 200 cycles"


@pytest.mark.anyio
async def test_a_cycle_of_a_remembered_file_costs_its_three_requests_and_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Goal 5 in small: a load/unload cycle does the HTTP it must and nothing else.

    The file is in the fingerprint cache: validation is answered inline (no
    worker thread), the preflight's question was asked once, and each cycle
    is ``POST /load``, the ``GET /health`` re-read, ``POST /unload``.
    """
    entry = write_model(tmp_path, "m0")
    remembered = FingerprintCache(min_age=0)
    assert validate_sync(entry, cache=remembered) is None
    remembered.save(tmp_path / "fingerprints.json")
    fake = FakeLemonade([FakeModel.for_file("m0", entry.path)])
    hops: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(*args: Any, **kwargs: Any) -> Any:
        hops.append(args[0])
        return await run_sync(*args, **kwargs)

    async with controller_on(fake, [entry], 1, cache_path=tmp_path / "fingerprints.json") as ctl:
        await ctl.load("s0", "m0")  # the server is asked about m0 once
        await ctl.unload("s0")
        fake.clear_log()
        monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
        for _ in range(3):
            assert (await ctl.load("s0", "m0")).model == "m0"
            assert (await ctl.unload("s0")).model is None
        monkeypatch.undo()
    cycle = [("POST", "load"), ("GET", "health"), ("POST", "unload")]
    assert [(r.method, r.route) for r in fake.requests] == cycle * 3
    assert hops == []
