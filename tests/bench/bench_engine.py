"""Engine benchmark: many slots through validate → load → loaded → unload → idle.

Run by hand (``python tests/bench/bench_engine.py [--slots 1000] [--backend asyncio]``).
It asserts nothing; it prints a table of figures and of ratios against a
reference measured in the same run: a bare ``transitions.Machine.trigger`` on
the same five transitions, with nothing attached.

* rulebook step — the functional core alone (guards, updates, effects);
* actor event — the same through each slot's actor task and mailbox, with
  instant stand-ins for hashing and HTTP;
* end to end — a real Controller: real validation of a small file in a worker
  thread, real HTTP through httpx to the in-process fake, and the ``/health``
  re-read after every load;
* memory per idle slot — a running Controller's slots (actor, task, mailbox,
  machine), measured with tracemalloc.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from transitions import Machine

from slotfsm import Controller, SlotConfig
from slotfsm.actor import SlotActor
from slotfsm.courier import Courier
from slotfsm.events import Load, LoadSucceeded, Unload, Unloaded, Validated
from slotfsm.ledger import Ledger
from slotfsm.lemonade import Health, LoadResult
from slotfsm.registry import ModelEntry
from slotfsm.rulebook import Rulebook, SlotMachine
from slotfsm.testing import FakeLemonade, FakeModel
from slotfsm.testing.files import write_model

EVENTS_PER_CYCLE = 5  # load, validated, load_succeeded, unload, unloaded


def best_of(runs: int, work: Callable[[], float]) -> float:
    return min(work() for _ in range(runs))


def bare_trigger_us(slots: int) -> float:
    """µs per trigger of a bare shared Machine over the same five transitions."""
    states = ["idle", "validating", "loading", "loaded", "unloading"]
    machine = Machine(model=None, states=states, initial="idle", auto_transitions=False)
    for trigger, source, dest in [
        ("load", "idle", "validating"),
        ("validated", "validating", "loading"),
        ("load_succeeded", "loading", "loaded"),
        ("unload", "loaded", "unloading"),
        ("unloaded", "unloading", "idle"),
    ]:
        machine.add_transition(trigger, source, dest)

    class Model:
        pass

    models = [Model() for _ in range(slots)]
    for model in models:
        machine.add_model(model)

    def run() -> float:
        start = time.perf_counter()
        for model in models:
            for trigger in ("load", "validated", "load_succeeded", "unload", "unloaded"):
                model.trigger(trigger)  # type: ignore[attr-defined]
        return time.perf_counter() - start

    return best_of(5, run) / (slots * EVENTS_PER_CYCLE) * 1e6


def rulebook_step_us(slots: int, entry: ModelEntry) -> float:
    """µs per event fed straight to the rulebook."""
    book = Rulebook()
    machines = [SlotMachine(SlotConfig(f"s{i}")) for i in range(slots)]
    for machine in machines:
        book.attach(machine)
    events = [
        Load(entry),
        Validated(entry, None),
        LoadSucceeded(entry.name, 0.0, 1),
        Unload(),
        Unloaded(entry.name),
    ]

    def run() -> float:
        start = time.perf_counter()
        for machine in machines:
            for event in events:
                book.step(machine, event)
        return time.perf_counter() - start

    return best_of(5, run) / (slots * EVENTS_PER_CYCLE) * 1e6


class InstantClient:
    """Answers every call at once: isolates the actor's own cost."""

    async def load(self, model_name: str, **options: Any) -> LoadResult:
        return LoadResult(model_name)

    async def unload(self, model_name: str) -> bool:
        return True

    async def health(self) -> Health:
        return Health(status="ok")


async def actor_event_us(slots: int, entry: ModelEntry) -> float:
    """µs per event through actors and mailboxes, with instant hashing and HTTP.

    Each slot loads a model of its own (the ledger lets one slot hold a name).
    """
    book = Rulebook()
    counter = iter(range(1, 1 << 62)).__next__

    async def passes(_: ModelEntry) -> None:
        return None

    async def no_reconcile(cause: str) -> None:
        return None

    async def no_objection(_: ModelEntry, __: SlotConfig) -> tuple[None, None]:
        return None, None

    ledger = Ledger(counter)
    async with anyio.create_task_group() as tg:
        courier = Courier(InstantClient(), ledger, lambda: tg)  # type: ignore[arg-type]
        actors = [
            SlotActor(
                SlotConfig(f"s{i}"),
                book,
                courier=courier,
                ledger=ledger,
                validate=passes,
                preflight=no_objection,
                reconcile=no_reconcile,
                sequence=counter,
                publish=lambda record: None,
                task_group=tg,
            )
            for i in range(slots)
        ]
        for actor in actors:
            tg.start_soon(actor.run)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            async with anyio.create_task_group() as cycle:
                for actor in actors:
                    cycle.start_soon(_cycle, actor, attrs.evolve(entry, name=f"m-{actor.name}"))
            best = min(best, time.perf_counter() - start)
        tg.cancel_scope.cancel()
    return best / (slots * EVENTS_PER_CYCLE) * 1e6


async def _cycle(actor: SlotActor, entry: ModelEntry) -> None:
    await actor.command(Load(entry))
    await actor.command(Unload())


async def end_to_end(slots: int, directory: str) -> tuple[float, float, int]:
    """(events per second, seconds, /health reads) for a real Controller and the fake."""
    entries = [write_model(directory, f"m{i}", size=1024) for i in range(slots)]
    fake = FakeLemonade(
        [FakeModel.for_file(e.name, e.path) for e in entries], max_models={"llm": -1}
    )
    configs = [SlotConfig(f"s{i}", idle_timeout=0) for i in range(slots)]
    async with Controller(
        lemonade_url="http://lemonade",
        registry=entries,
        slots=configs,
        transport=fake.transport(),
        poll_interval=3600,
    ) as ctl:
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(slots):
                tg.start_soon(_controller_cycle, ctl, f"s{i}", f"m{i}")
        elapsed = time.perf_counter() - start
    return slots * EVENTS_PER_CYCLE / elapsed, elapsed, len(fake.health_polls())


async def _controller_cycle(ctl: Controller, slot: str, model: str) -> None:
    await ctl.load(slot, model)
    await ctl.unload(slot)


async def memory_per_slot(slots: int) -> float:
    """Bytes per idle slot of a running Controller."""
    fake = FakeLemonade()
    configs = [SlotConfig(f"s{i}") for i in range(slots)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    async with Controller(
        lemonade_url="http://lemonade",
        registry=[],
        slots=configs,
        transport=fake.transport(),
        poll_interval=3600,
    ):
        gc.collect()
        after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / slots


async def main_async(slots: int) -> dict[str, Any]:
    entry = ModelEntry(name="m", path="/m.gguf", sha256="0" * 64, size=1)
    results: dict[str, Any] = {"slots": slots}
    results["bare"] = bare_trigger_us(slots)
    results["step"] = rulebook_step_us(slots, entry)
    results["actor"] = await actor_event_us(slots, entry)
    with tempfile.TemporaryDirectory() as directory:
        results["e2e"] = await end_to_end(slots, directory)
    results["memory"] = await memory_per_slot(slots)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=1000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    r = anyio.run(main_async, args.slots, backend=args.backend)
    bare = r["bare"]
    eps, seconds, polls = r["e2e"]
    print(f"slotfsm engine benchmark: {r['slots']} slots, {args.backend}")
    print()
    print("| measure | figure | ratio to bare Machine.trigger | goal |")
    print("|---|---|---|---|")
    print(f"| bare `transitions.Machine.trigger` (reference) | {bare:.1f} µs/event | 1.00x | |")
    print(
        f"| rulebook step (guards, updates, effects) | {r['step']:.1f} µs/event "
        f"| {r['step'] / bare:.2f}x | ≤ 3x |"
    )
    print(
        f"| actor event (mailbox, task, rulebook; instant I/O) | {r['actor']:.1f} µs/event "
        f"| {r['actor'] / bare:.2f}x | |"
    )
    print(
        f"| end to end (hashing thread, HTTP to in-process fake, /health re-reads) "
        f"| {eps:,.0f} events/s ({seconds:.2f} s, {polls} /health reads) "
        f"| {1e6 / eps / bare:.1f}x | |"
    )
    print(
        f"| memory per idle slot (running Controller) | {r['memory'] / 1024:.1f} KiB | | ≤ 16 KiB |"
    )


if __name__ == "__main__":
    main()
