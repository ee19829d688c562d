"""Idle unload and reconciliation: hal0's policy, at its real defaults, in virtual time."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import anyio
import httpx
import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from kit import ControllerFactory, examples, served_controller, virtual_time

from slotfsm import (
    Controller,
    Health,
    LoadedModel,
    ModelEntry,
    PreloadError,
    SlotConfig,
    SlotSnapshot,
    SlotState,
)
from slotfsm.events import Load, LoadSucceeded, Observed, Unloaded, UseChanged, Validated
from slotfsm.rulebook import Rulebook, SlotMachine
from slotfsm.testing import FakeLemonade, FakeModel, HealthFault

pytestmark = pytest.mark.anyio
virtual = virtual_time


def moved(snap: SlotSnapshot, source: SlotState, dest: SlotState) -> float:
    """When the slot last went from ``source`` to ``dest`` (fails if it never did)."""
    times = [t.at for t in snap.history if (t.source, t.dest) == (source, dest)]
    assert times, f"{snap.slot} never went {source} -> {dest}: {snap.history}"
    return times[-1]


@virtual
async def test_unused_model_is_unloaded_after_five_minutes(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """The seed's idle test at its real defaults: 30 s polls, 300 s idle."""
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        await anyio.sleep(299)
        assert ctl.snapshot("chat").state is SlotState.LOADED
        await anyio.sleep(60)
        snap = ctl.snapshot("chat")
        assert (snap.state, snap.model) == (SlotState.IDLE, None)
        assert [r.body for r in fake.unloads()] == [{"model_name": "alpha"}]
        idle_for = moved(snap, SlotState.LOADED, SlotState.UNLOADING) - moved(
            snap, SlotState.LOADING, SlotState.LOADED
        )
        assert 300.0 <= idle_for < 330.0  # detected by the first poll past 300 s
        assert fake.loaded_models() == []


@virtual
async def test_a_model_in_use_is_never_unloaded(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        async with ctl.in_use("chat"):
            await anyio.sleep(1200)  # a ten-minute stream and then some
            assert ctl.snapshot("chat").state is SlotState.LOADED
            assert ctl.snapshot("chat").in_use == 1
        released = anyio.current_time()
        await anyio.sleep(400)
        snap = ctl.snapshot("chat")
        assert snap.state is SlotState.IDLE
        assert moved(snap, SlotState.LOADED, SlotState.UNLOADING) - released >= 300.0


@virtual
async def test_a_model_whose_last_use_keeps_changing_stays(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        for _ in range(12):
            await anyio.sleep(100)
            fake.mark_used("alpha")
        assert ctl.snapshot("chat").state is SlotState.LOADED
        assert fake.unloads() == []
        await anyio.sleep(400)
        assert ctl.snapshot("chat").state is SlotState.IDLE


@virtual
async def test_server_reported_busy_model_stays(models: dict[str, ModelEntry]) -> None:
    fake = FakeLemonade([FakeModel.for_file("alpha", models["alpha"].path)], newer_fields=True)
    async with Controller(
        lemonade_url="http://lemonade",
        registry=[models["alpha"]],
        slots=[SlotConfig("chat")],
        transport=fake.transport(),
    ) as ctl:
        await ctl.load("chat", "alpha")
        with fake.busy("alpha"):
            await anyio.sleep(1200)
            assert ctl.snapshot("chat").state is SlotState.LOADED
        await anyio.sleep(400)
        assert ctl.snapshot("chat").state is SlotState.IDLE


@virtual
async def test_reload_restarts_the_idle_clock_and_zero_means_never(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat"), SlotConfig("keep", idle_timeout=0)) as ctl:
        await ctl.load("chat", "alpha")
        await ctl.load("keep", "beta")
        await anyio.sleep(200)
        await ctl.load("chat", "alpha")  # the same model again: a fresh idle clock
        reloaded = anyio.current_time()
        await anyio.sleep(200)
        assert ctl.snapshot("chat").state is SlotState.LOADED
        await anyio.sleep(200)
        snap = ctl.snapshot("chat")
        assert snap.state is SlotState.IDLE
        assert moved(snap, SlotState.LOADED, SlotState.UNLOADING) - reloaded >= 300.0
        await anyio.sleep(3600)
        assert ctl.snapshot("keep").state is SlotState.LOADED
        assert fake.loaded_models() == ["beta"]


@virtual
async def test_first_sighting_never_unloads(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        with fake.health_fault(HealthFault.SERVER_ERROR):  # the post-load re-read sees nothing
            await ctl.load("chat", "alpha")
            await anyio.sleep(615)  # between two polls, so that only our refreshes see it
            assert ctl.snapshot("chat").state is SlotState.LOADED  # never seen: never judged
        await ctl.refresh()  # first sighting, 600 s after the load
        assert ctl.snapshot("chat").state is SlotState.LOADED
        await ctl.refresh()  # seen before and unchanged: now it is idle
        snap = ctl.snapshot("chat")
        assert snap.state in (SlotState.UNLOADING, SlotState.IDLE)  # the unload may be done
        assert [t.reason for t in snap.history if t.dest is SlotState.UNLOADING] == [
            "idle expired, not in use"
        ]


@virtual
@pytest.mark.parametrize(
    "fault",
    # A malformed row no longer costs the reading (the row alone is left out).
    [f for f in HealthFault if f is not HealthFault.NAME_NOT_STRING],
)
async def test_a_flaky_health_never_unloads_and_polling_goes_on(
    fault: HealthFault,
    fake: FakeLemonade,
    make_controller: ControllerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with make_controller(SlotConfig("chat"), http_timeout=5.0) as ctl:
        await ctl.load("chat", "alpha")
        await anyio.sleep(100)
        fake.mark_used("alpha")
        with fake.health_fault(fault):
            with caplog.at_level(logging.WARNING, logger="slotfsm"):
                await anyio.sleep(900)
            assert ctl.snapshot("chat").state is SlotState.LOADED
            assert fake.unloads() == []
            assert ctl.idle_watcher.failures >= 20
            assert "health poll failed" in caplog.text
        await anyio.sleep(400)
        assert ctl.snapshot("chat").state is SlotState.IDLE


@virtual
async def test_one_poll_per_interval_for_many_slots(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    slots = [SlotConfig(f"s{i}", idle_timeout=0) for i in range(20)]
    async with make_controller(*slots):
        start = anyio.current_time()
        await anyio.sleep(610)
        polls = [r.at for r in fake.health_polls()]
        assert len(polls) == 21  # at start, then every 30 s up to 600 s
        assert all(b - a == pytest.approx(30.0) for a, b in itertools.pairwise(polls))
        assert polls[0] == pytest.approx(start, abs=0.01)


@virtual
async def test_a_slow_health_never_overlaps(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    fake.health_fault(HealthFault.HANG)  # each poll takes its full 100 s
    async with make_controller(SlotConfig("chat"), http_timeout=100.0) as ctl:
        await anyio.sleep(1000)
        polls = fake.health_polls()
        gaps = [b.at - a.at for a, b in itertools.pairwise(polls)]
        assert polls and all(gap >= 100.0 for gap in gaps), gaps
        assert ctl.idle_watcher.polls == len(polls)


@virtual
async def test_server_lru_eviction_is_seen_at_once(models: dict[str, ModelEntry]) -> None:
    fake = FakeLemonade(
        [FakeModel.for_file(n, models[n].path) for n in ("alpha", "beta")]
    )  # one llm
    async with Controller(
        lemonade_url="http://lemonade",
        registry=[models["alpha"], models["beta"]],
        slots=[SlotConfig("a"), SlotConfig("b")],
        transport=fake.transport(),
    ) as ctl:
        await ctl.load("a", "alpha")
        await ctl.load("b", "beta")  # the server's LRU drops alpha
        snap = ctl.snapshot("a")
        assert snap.state is SlotState.IDLE
        assert snap.error is not None and snap.error.kind is PreloadError.EVICTED
        assert ctl.snapshot("b").state is SlotState.LOADED


@virtual
async def test_server_restart_is_seen_within_one_poll(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        await ctl.load("b", "beta")
        fake.restart()
        await anyio.sleep(30.5)  # one poll interval (and a hair, past a tie with the poll)
        for name in ("a", "b"):
            snap = ctl.snapshot(name)
            assert snap.state is SlotState.IDLE
            assert snap.error is not None and snap.error.kind is PreloadError.EVICTED
        assert fake.unloads() == []


class FailingUnloads(httpx.AsyncBaseTransport):
    """Answers ``/unload`` of the named models with a 500; the rest goes to the fake."""

    def __init__(self, fake: FakeLemonade, *models: str) -> None:
        self.inner = fake.transport()
        self.models = set(models)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/unload") and json.loads(request.content)["model_name"] in self.models:
            return httpx.Response(500, json={"error": "backend would not stop"})
        return await self.inner.handle_async_request(request)


@virtual
async def test_a_failed_idle_unload_keeps_the_model_with_an_error_and_others_go_on(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    transport = FailingUnloads(fake, "alpha")
    async with make_controller(SlotConfig("a"), SlotConfig("b"), transport=transport) as ctl:
        await ctl.load("a", "alpha")
        await ctl.load("b", "beta")
        await anyio.sleep(400)
        a, b = ctl.snapshot("a"), ctl.snapshot("b")
        # The server still holds it: the slot keeps owning it, and says the unload failed.
        assert (a.state, a.model) == (SlotState.LOADED, "alpha")
        assert ctl.ledger.owner_of("alpha") == "a" and ctl.ledger.owed() == ()
        assert a.error is not None and a.error.kind is PreloadError.UNLOAD_FAILED
        assert "backend would not stop" in a.error.message
        assert b.state is SlotState.IDLE and b.error is None
        # An explicit unload tries again (the model may still be there): it is a command.
        transport.models.clear()
        assert (await ctl.unload("a")).state is SlotState.IDLE
        assert fake.loaded_models() == []


@virtual
async def test_a_failed_idle_unload_is_retried_with_a_bounded_backoff(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """Idle at 300 s, polled every 30 s: tries at +0, +30, +90, +210, +450, then every 480 s."""
    transport = FailingUnloads(fake, "alpha")
    async with (
        make_controller(SlotConfig("a"), transport=transport) as ctl,
        ctl.transitions() as log,
    ):
        await ctl.load("a", "alpha")
        tries: list[float] = []

        async def count() -> None:
            async for record in log:
                if record.trigger == "observed" and record.dest is SlotState.UNLOADING:
                    tries.append(record.at)

        async with anyio.create_task_group() as group:
            group.start_soon(count)
            await anyio.sleep(300 + 1000)
            group.cancel_scope.cancel()
        gaps = [round(b - a) for a, b in itertools.pairwise(tries)]
        assert gaps == [30, 60, 120, 240, 480], gaps
        assert ctl.snapshot("a").model == "alpha"
        transport.models.clear()  # the server lets go: the next due try works
        await anyio.sleep(480)
        assert ctl.snapshot("a").state is SlotState.IDLE and fake.loaded_models() == []


async def test_late_arrival_after_a_timeout_is_unloaded_not_adopted(
    models: dict[str, ModelEntry],
) -> None:
    fake = FakeLemonade([FakeModel.for_file("alpha", models["alpha"].path)])
    slot = SlotConfig("chat", load_timeout=0.2)
    async with served_controller(fake, [models["alpha"]], slot, poll_interval=60.0) as ctl:
        hang = fake.hanging("alpha")
        snap = await ctl.load("chat", "alpha")
        assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
        hang.off()  # the server finishes the load we gave up on
        with anyio.fail_after(5):
            while "alpha" not in fake.loaded_models():
                await fake.wait_changed()
            await ctl.refresh()  # sees the late model: the slot unloads it, once
            while "alpha" in fake.loaded_models():
                await fake.wait_changed()
        snap = ctl.snapshot("chat")
        assert snap.state is SlotState.ERROR  # not adopted: error is left only by a command
        assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
        assert [r.body for r in fake.unloads()] == [{"model_name": "alpha"}]
        assert len(fake.loads()) == 1
        assert fake.loaded_models() == []


async def test_unload_real_time_over_loopback(models: dict[str, ModelEntry]) -> None:
    """The idle test in real time: 0.2 s polls, 1 s idle, on a real socket.

    How soon after the deadline the unload comes is for the virtual-time test
    above (the first poll past it); in real time it depends on the machine.
    """
    fake = FakeLemonade([FakeModel.for_file("alpha", models["alpha"].path)])
    slot = SlotConfig("chat", idle_timeout=1.0)
    async with (
        served_controller(fake, [models["alpha"]], slot, poll_interval=0.2) as ctl,
        ctl.transitions() as stream,
    ):
        await ctl.load("chat", "alpha")
        with anyio.fail_after(5):
            async for t in stream:
                if t.dest is SlotState.IDLE:
                    break
        snap = ctl.snapshot("chat")
        idle_for = moved(snap, SlotState.LOADED, SlotState.UNLOADING) - moved(
            snap, SlotState.LOADING, SlotState.LOADED
        )
        assert idle_for >= 1.0  # never sooner than idle_timeout after it was loaded...
        assert [t.reason for t in snap.history if t.dest is SlotState.UNLOADING] == [
            "idle expired, not in use"  # ...and by the idle rule, at a poll
        ]
        assert [r.body for r in fake.unloads()] == [{"model_name": "alpha"}]


# -- restart without leaks ----------------------------------------------------------


@virtual
async def test_a_restarted_controller_resumes_what_the_server_holds(
    fake: FakeLemonade, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    state = tmp_path / "slots.json"
    slots = (SlotConfig("a"), SlotConfig("b"), SlotConfig("c"))
    async with make_controller(*slots, state_path=state) as ctl:
        await ctl.load("a", "alpha")
        await ctl.load("b", "beta")
    assert json.loads(state.read_text()) == {
        "version": 2,
        "models": {
            "alpha": {"owner": "a", "phase": "held"},
            "beta": {"owner": "b", "phase": "held"},
        },
    }
    assert fake.loaded_models() == ["alpha", "beta"]  # left loaded on purpose

    fake.evict_all()  # ... and while we were away, the server lost them
    fake_loads_before = len(fake.loads())
    async with make_controller(*slots, state_path=state) as ctl:
        assert ctl.snapshot("a").state is SlotState.IDLE

    async with make_controller(*slots, state_path=state) as ctl:
        await ctl.load("a", "alpha")
    await anyio.sleep(250)
    async with make_controller(*slots, state_path=state) as ctl:
        snap = ctl.snapshot("a")
        assert (snap.state, snap.model) == (SlotState.LOADED, "alpha")
        resumed = anyio.current_time()
        await anyio.sleep(400)  # a fresh idle clock from the restart, then unloaded
        snap = ctl.snapshot("a")
        assert snap.state is SlotState.IDLE
        assert moved(snap, SlotState.LOADED, SlotState.UNLOADING) - resumed >= 300.0
    assert json.loads(state.read_text()) == {"version": 2, "models": {}}
    assert len(fake.loads()) == fake_loads_before + 1


@pytest.mark.parametrize(
    "content", ["{not json", '{"version": 99, "slots": {}}', '{"version": 1, "slots": [1]}']
)
async def test_a_bad_state_file_is_reported_and_ignored(
    content: str,
    make_controller: ControllerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "slots.json"
    state.write_text(content)
    with caplog.at_level(logging.WARNING, logger="slotfsm"):
        async with make_controller(SlotConfig("a"), state_path=state) as ctl:
            assert ctl.snapshot("a").state is SlotState.IDLE
            await ctl.load("a", "alpha")
    assert "state file" in caplog.text
    assert json.loads(state.read_text()) == {
        "version": 2,
        "models": {"alpha": {"owner": "a", "phase": "held"}},
    }


# -- the idle rule as a property --------------------------------------------------------


class IdleRuleMachine(RuleBasedStateMachine):
    """Polls, uses, loads and clock advances in any order, fed to one slot's rulebook.

    The test keeps its own account of when the model last showed use, and checks
    both ways: the slot goes idle-unloading only when the model has been quiet for
    ``idle_timeout`` and is not in use, and it always does when a poll finds that so.
    """

    TIMEOUT = 100.0

    def __init__(self) -> None:
        super().__init__()
        self.book = Rulebook()
        self.slot = SlotMachine(SlotConfig("s", idle_timeout=self.TIMEOUT))
        self.book.attach(self.slot)
        self.now = 0.0
        self.seq = 0
        self.last_use = 0
        self.seen: int | None = None  # the last_use value the slot last saw, if any
        self.quiet_since = 0.0
        self.in_use = 0

    @precondition(lambda self: self.slot.state is not SlotState.LOADED)
    @rule()
    def load(self) -> None:
        entry = ModelEntry(name="m", path="/m.gguf", sha256="0" * 64, size=1)
        for event in (Load(entry), Validated(entry, None), LoadSucceeded("m", self.now, 0)):
            self.book.step(self.slot, event)
        if self.slot.state is SlotState.LOADED:
            self.last_use += 1  # a load moves last_use on the server
            self.seen, self.quiet_since = None, self.now

    @rule(seconds=st.floats(0, 80))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.slot.state is SlotState.LOADED)
    @rule()
    def inference(self) -> None:
        self.last_use += 1

    @rule(delta=st.sampled_from([1, -1]))
    def use(self, delta: int) -> None:
        if delta < 0 and self.in_use == 0:
            return
        self.in_use += delta
        self.book.step(self.slot, UseChanged(delta, self.now))
        self.quiet_since = self.now

    @rule(busy=st.booleans())
    def poll(self, busy: bool) -> None:
        self.seq += 1
        health = Health("ok", models=(LoadedModel("m", last_use=self.last_use, busy=busy),))
        was_loaded = self.slot.state is SlotState.LOADED
        expired = (
            was_loaded
            and self.seen == self.last_use
            and not busy
            and self.in_use == 0
            and self.now - self.quiet_since >= self.TIMEOUT
        )
        step = self.book.step(self.slot, Observed(health, self.now, self.seq))
        unloaded = step.dest is SlotState.UNLOADING and step.source is SlotState.LOADED
        assert unloaded == expired, (unloaded, expired, self.now - self.quiet_since)
        if unloaded:
            self.book.step(self.slot, Unloaded("m"))
        elif was_loaded:
            if self.seen is not None and (self.seen != self.last_use or busy):
                self.quiet_since = self.now
            self.seen = self.last_use


TestIdleRule = IdleRuleMachine.TestCase
TestIdleRule.settings = settings(max_examples=examples(300), stateful_step_count=50)
