"""Hypothesis over a whole Controller and the in-process fake.

Random programs of load / unload / reset commands, sent concurrently to
several slots, with random model files (sound, corrupt, missing, truncated)
and random server behaviour (hanging, failing with an evict-all, failing
with "not found").  Afterwards the fake's request log and the slots'
transition records must show that slotfsm kept every promise.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
import httpx
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from kit import examples, virtual_clock
from oracle import check_quiescent, check_step, fake_settled

from slotfsm import Controller, ModelEntry, SlotConfig, SlotState, SlotTransition
from slotfsm.ledger import Ledger
from slotfsm.testing import FakeLemonade, FakeModel, Switch
from slotfsm.testing.files import Flaw, write_model

SLOTS = ("s0", "s1", "s2")
KINDS = ("good", "good2", "corrupt", "missing", "truncated", "hang", "crash", "gone")
FLAWS = {"corrupt": Flaw.SHA256, "missing": Flaw.MISSING, "truncated": Flaw.TRUNCATED}
BAD_FILES = set(FLAWS)


def model_name(slot: str, kind: str) -> str:
    return f"{slot}-{kind}"


class LoadTracker(httpx.AsyncBaseTransport):
    """Counts ``/load`` requests in flight per slot that the slot still waits for.

    Models are named after their slot.  A load the slot gave up on (timed
    out) keeps running on the server; the controller's ledger counts each
    as an arrival, so those are not waited for.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.ledger: Ledger | None = None

    def waited_for(self, slot: str) -> int:
        entries = self.ledger.entries().values() if self.ledger is not None else ()
        return self.in_flight[slot] - sum(
            e.arrivals for e in entries if e.name.split("-")[0] == slot
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/load"):
            return await self.inner.handle_async_request(request)
        slot = json.loads(request.content)["model_name"].split("-")[0]
        self.in_flight[slot] += 1
        self.peak[slot] = max(self.peak[slot], self.waited_for(slot))
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight[slot] -= 1


commands = st.tuples(
    st.sampled_from(SLOTS),
    st.sampled_from(["load", "load", "load", "unload", "reset"]),
    st.sampled_from(KINDS),
)
programs = st.lists(st.lists(commands, min_size=1, max_size=4), min_size=1, max_size=5)


async def run_program(directory: Path, program: list[list[tuple[str, str, str]]]) -> None:
    entries: list[ModelEntry] = []
    fake = FakeLemonade(max_models={"llm": -1})
    hangs: list[Switch[None]] = []
    for slot in SLOTS:
        for kind in KINDS:
            name = model_name(slot, kind)
            entries.append(write_model(directory, name, flaw=FLAWS.get(kind)))
            if kind != "gone":
                fake.add_model(
                    FakeModel.for_file(name, entries[-1].path)
                )  # "gone": the server does not know it
        hangs.append(fake.hanging(model_name(slot, "hang")))
        fake.failing(model_name(slot, "crash"), "llama-server failed to start")
    tracker = LoadTracker(fake.transport())
    answers: Counter[int] = Counter()
    records: list[SlotTransition] = []
    configs = [SlotConfig(s, load_timeout=10.0, idle_timeout=0) for s in SLOTS]

    ours = {e.name for e in entries}
    async with Controller(
        lemonade_url="http://lemonade", registry=entries, slots=configs, transport=tracker
    ) as ctl:
        tracker.ledger = ctl.ledger
        stream = ctl.transitions(buffer=100_000)

        async def send(index: int, slot: str, command: str, kind: str) -> None:
            if command == "load":
                snap = await ctl.load(slot, model_name(slot, kind))
            elif command == "unload":
                snap = await ctl.unload(slot)
            else:
                snap = await ctl.reset(slot)
            assert snap.state.settled, snap
            check_step(ctl, fake, ours)
            answers[index] += 1

        index = 0
        for batch in program:
            async with anyio.create_task_group() as tg:
                for slot, command, kind in batch:
                    tg.start_soon(send, index, slot, command, kind)
                    index += 1
        await ctl.refresh()
        await anyio.wait_all_tasks_blocked()  # clean-ups the reading started have run
        snapshots = ctl.snapshots()
        owed = set(ctl.ledger.owed())
        on_server = set(fake.loaded_models())
        check_step(ctl, fake, ours)
        # then the server calms down: the hung loads finish, and the shared oracle's
        # quiescence holds (one reading cleans up, the next finds nothing owed)
        for hang in hangs:
            hang.off()
        with anyio.fail_after(3600):
            await fake_settled(fake)
            await anyio.wait_all_tasks_blocked()
            await check_quiescent(ctl, fake, ours)
        stream.close()
        records = [record async for record in stream]

    # every command answered exactly once, and every slot settled
    assert sorted(answers) == list(range(index)) and set(answers.values()) <= {1}
    assert all(snap.state.settled for snap in snapshots.values())
    loads = [r.body["model_name"] for r in fake.loads() if isinstance(r.body, dict)]
    # no /load ever follows a failed validation
    assert not [m for m in loads if m.split("-", 1)[1] in BAD_FILES]
    # at most one /load in flight per slot that the slot still waits for
    assert all(peak <= 1 for peak in tracker.peak.values()), tracker.peak
    # no unload without a model name
    for r in fake.unloads():
        assert isinstance(r.body, dict) and str(r.body.get("model_name", "")).strip()
    # never a retry, nothing no command asked for: at most one /load per entry into `loading`
    entered: dict[str, int] = defaultdict(int)
    for t in records:
        if t.dest is SlotState.LOADING:
            entered[t.slot] += 1
    sent = Counter(m.split("-")[0] for m in loads)
    assert all(n <= entered[s] for s, n in sent.items()), (dict(sent), dict(entered))
    # the final snapshots and the ledger tell the server's truth: what the server holds is
    # held by a loaded slot or owed by the ledger (a late arrival on its way out)
    held = {snap.model for snap in snapshots.values() if snap.state is SlotState.LOADED}
    assert held <= on_server <= held | owed, (held, on_server, owed)
    for snap in snapshots.values():
        assert (snap.state is SlotState.LOADED) == (snap.model is not None)


@settings(max_examples=examples(60))
@given(program=programs)
def test_random_programs_keep_every_promise(tmp_path_factory: Any, program: Any) -> None:
    directory = tmp_path_factory.mktemp("models")
    options = {"clock": virtual_clock()}
    anyio.run(run_program, directory, program, backend="trio", backend_options=options)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_fixed_storm_on_both_backends(tmp_path: Path, backend: str) -> None:
    program = [
        [("s0", "load", "good"), ("s1", "load", "corrupt"), ("s2", "load", "crash")],
        [("s0", "load", "good2"), ("s0", "unload", "good"), ("s1", "load", "good")],
        [("s1", "reset", "good"), ("s2", "load", "gone"), ("s2", "load", "good")],
        [("s0", "load", "missing"), ("s1", "unload", "good"), ("s2", "load", "truncated")],
    ]
    anyio.run(run_program, tmp_path, program, backend=backend)
