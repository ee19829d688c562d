"""The Controller against the in-process fake: the contract hal0 codes against."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from checks import loads_of
from kit import ControllerFactory, virtual_time

from slotfsm import (
    ConfigError,
    Controller,
    ControllerClosedError,
    ModelEntry,
    ModelInUseError,
    PreloadError,
    SlotConfig,
    SlotfsmError,
    SlotState,
    UnknownModelError,
    UnknownSlotError,
)
from slotfsm.testing import FakeLemonade

pytestmark = pytest.mark.anyio


async def test_load_then_unload(fake: FakeLemonade, make_controller: ControllerFactory) -> None:
    async with make_controller(SlotConfig("chat", ctx_size=4096)) as ctl:
        snap = await ctl.load("chat", "alpha")
        assert (snap.state, snap.model, snap.error) == (SlotState.LOADED, "alpha", None)
        assert fake.loaded_models() == ["alpha"]
        assert [r.body for r in fake.loads()] == [{"model_name": "alpha", "ctx_size": 4096}]
        assert ctl.snapshot("chat") == snap

        snap = await ctl.unload("chat")
        assert (snap.state, snap.model, snap.error) == (SlotState.IDLE, None, None)
        assert [r.body for r in fake.unloads()] == [{"model_name": "alpha"}]
        assert fake.loaded_models() == []
        states = [(t.source, t.dest) for t in snap.history]
        assert states == [
            (SlotState.IDLE, SlotState.VALIDATING),
            (SlotState.VALIDATING, SlotState.LOADING),
            (SlotState.LOADING, SlotState.LOADED),
            (SlotState.LOADED, SlotState.UNLOADING),
            (SlotState.UNLOADING, SlotState.IDLE),
        ]


async def test_misuse_raises_and_sends_nothing(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        before = len(fake.requests)
        with pytest.raises(UnknownSlotError, match="nope"):
            await ctl.load("nope", "alpha")
        with pytest.raises(UnknownModelError, match="unheard-of"):
            await ctl.load("chat", "unheard-of")
        with pytest.raises(UnknownSlotError):
            ctl.snapshot("nope")
        assert len(fake.requests) == before
    with pytest.raises(SlotfsmError, match="not running"):
        ctl.snapshot("chat")


def test_bad_configuration_is_refused_at_construction(models: dict[str, ModelEntry]) -> None:
    registry = list(models.values())
    with pytest.raises(ConfigError, match="duplicate slot"):
        Controller(
            lemonade_url="http://x", registry=registry, slots=[SlotConfig("a"), SlotConfig("a")]
        )
    assert Controller(lemonade_url="http://x", registry=registry, slots=[]).slot_names == ()
    with pytest.raises(ConfigError, match="poll_interval"):
        Controller(
            lemonade_url="http://x", registry=registry, slots=[SlotConfig("a")], poll_interval=0
        )


async def test_failed_validation_sends_nothing_and_keeps_others(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("a"), SlotConfig("b"), SlotConfig("c")) as ctl:
        await ctl.load("a", "alpha")
        await ctl.load("b", "beta")
        for model, kind in [
            ("corrupt", PreloadError.SHA256_MISMATCH),
            ("truncated", PreloadError.SIZE_MISMATCH),
            ("missing", PreloadError.FILE_MISSING),
        ]:
            snap = await ctl.load("c", model)
            assert snap.state is SlotState.ERROR
            assert snap.error is not None and snap.error.kind is kind
            assert loads_of(fake, model) == []
        assert fake.loaded_models() == ["alpha", "beta"]
        assert ctl.snapshot("a").state is SlotState.LOADED
        assert ctl.snapshot("b").state is SlotState.LOADED
        assert fake.evict_all_count == 0


async def test_refused_swap_keeps_the_old_model(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        sent = len(fake.requests)
        snap = await ctl.load("chat", "corrupt")
        assert snap.state is SlotState.LOADED
        assert snap.model == "alpha"
        assert snap.error is not None and snap.error.kind is PreloadError.SHA256_MISMATCH
        assert [r.route for r in fake.requests[sent:]] == []  # nothing at all reached the server
        assert fake.loaded_models() == ["alpha"]


async def test_swap_unloads_the_old_model_first(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        sent = len(fake.requests)
        snap = await ctl.load("chat", "beta")
        assert (snap.state, snap.model, snap.error) == (SlotState.LOADED, "beta", None)
        routes = [(r.route, r.body) for r in fake.requests[sent:] if r.route != "health"]
        assert routes == [
            ("model", None),  # which file is beta? asked before anything changes
            ("unload", {"model_name": "alpha"}),
            ("load", {"model_name": "beta"}),
        ]
        assert fake.loaded_models() == ["beta"]
        assert snap.checkpoint_confirmed is True


async def test_load_failure_and_the_evict_all_it_causes_are_reported(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        fake.failing("beta", "llama-server failed to start")
        snap = await ctl.load("b", "beta")
        assert snap.state is SlotState.ERROR
        assert snap.error is not None and snap.error.kind is PreloadError.LOAD_FAILED
        assert "llama-server failed to start" in snap.error.message
        assert fake.evict_all_count == 1
        # Re-read after the load: slot a knows its model is gone before load() returned.
        other = ctl.snapshot("a")
        assert (other.state, other.model) == (SlotState.IDLE, None)
        assert other.error is not None and other.error.kind is PreloadError.EVICTED
        assert len(loads_of(fake, "beta")) == 1  # never retried by slotfsm


async def test_a_200_that_hides_an_evict_all_is_noticed(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        fake.failing("beta", "llama-server failed to start", retry_succeeds=True)
        snap = await ctl.load("b", "beta")
        assert (snap.state, snap.model, snap.error) == (SlotState.LOADED, "beta", None)
        assert fake.evict_all_count == 1
        other = ctl.snapshot("a")
        assert other.state is SlotState.IDLE
        assert other.error is not None and other.error.kind is PreloadError.EVICTED
        assert "evicted by the server" in other.error.message


async def test_not_found_failure_touches_nothing_else(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        fake.failing("beta", "No such file or directory")
        snap = await ctl.load("b", "beta")
        assert snap.state is SlotState.ERROR
        assert ctl.snapshot("a").state is SlotState.LOADED
        assert fake.evict_all_count == 0


async def test_error_is_left_only_by_a_command(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        snap = await ctl.load("chat", "corrupt")
        assert snap.state is SlotState.ERROR
        for _ in range(3):
            await ctl.refresh()
        assert ctl.snapshot("chat").state is SlotState.ERROR
        snap = await ctl.reset("chat")
        assert (snap.state, snap.error) == (SlotState.IDLE, None)
        await ctl.load("chat", "corrupt")
        snap = await ctl.load("chat", "alpha")
        assert snap.state is SlotState.LOADED


async def test_unload_on_an_idle_slot_sends_nothing(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        snap = await ctl.unload("chat")
        assert snap.state is SlotState.IDLE
        assert fake.unloads() == []


async def test_commands_to_one_slot_are_serialized(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    results: dict[str, Any] = {}
    async with make_controller(SlotConfig("chat")) as ctl:

        async def load(model: str) -> None:
            results[model] = await ctl.load("chat", model)

        async with anyio.create_task_group() as tg:
            for model in ("alpha", "beta", "gamma"):
                tg.start_soon(load, model)
        assert fake.max_concurrent_loads == 1
        assert {snap.state for snap in results.values()} == {SlotState.LOADED}
        final = ctl.snapshot("chat")
        assert final.state is SlotState.LOADED
        assert fake.loaded_models() == [final.model]
        assert len(fake.loads()) == 3


async def test_a_crash_in_one_slot_stays_in_that_slot(
    fake: FakeLemonade, make_controller: ControllerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slotfsm.controller

    real = slotfsm.controller.validate

    async def flaky(entry: ModelEntry, **kwargs: Any) -> Any:
        if entry.name == "beta":
            raise RuntimeError("disk on fire")
        return await real(entry, **kwargs)

    monkeypatch.setattr(slotfsm.controller, "validate", flaky)
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        snap = await ctl.load("b", "beta")
        assert snap.state is SlotState.ERROR
        assert snap.error is not None and snap.error.kind is PreloadError.INTERNAL
        assert "disk on fire" in snap.error.message
        assert loads_of(fake, "beta") == []
        assert ctl.snapshot("a").state is SlotState.LOADED
        assert (await ctl.load("b", "gamma")).state is SlotState.LOADED


async def test_transition_stream_and_its_bounded_buffer(
    make_controller: ControllerFactory,
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        async with ctl.transitions() as everything, ctl.transitions(buffer=2) as slow:
            await ctl.load("chat", "alpha")
            await ctl.unload("chat")
        seen = [(t.slot, t.source, t.dest, t.trigger) async for t in everything]
        assert seen[0] == ("chat", SlotState.IDLE, SlotState.VALIDATING, "load")
        assert seen[-1] == ("chat", SlotState.UNLOADING, SlotState.IDLE, "unloaded")
        assert len(seen) == 5 and everything.dropped == 0
        tail = [(t.source, t.dest) async for t in slow]
        assert tail == [
            (SlotState.LOADED, SlotState.UNLOADING),
            (SlotState.UNLOADING, SlotState.IDLE),
        ]
        assert slow.dropped == 3


async def test_unload_during_a_load_waits_for_it(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        hang = fake.hanging("alpha")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ctl.load, "chat", "alpha")
            await fake.wait_hanging("alpha")
            assert ctl.snapshot("chat").state is SlotState.LOADING
            # The unload is postponed until the load settles, then applied.
            with anyio.fail_after(5):
                async with anyio.create_task_group() as inner:
                    inner.start_soon(ctl.unload, "chat")
                    await anyio.wait_all_tasks_blocked()
                    assert ctl.snapshot("chat").state is SlotState.LOADING
                    hang.off()
        assert ctl.snapshot("chat").state is SlotState.IDLE
        assert [r.route for r in fake.requests if r.route in ("load", "unload")] == [
            "load",
            "unload",
        ]


@virtual_time
async def test_hung_load_times_out_at_the_default_120s_without_retry(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("a", idle_timeout=0), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        fake.hanging("beta")
        snap = await ctl.load("b", "beta")
        assert snap.state is SlotState.ERROR
        assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
        assert "120 s" in snap.error.message
        # Measured on the slot's own record: from entering loading to leaving it.
        entered, left = snap.history[-2], snap.history[-1]
        assert (entered.dest, left.source, left.dest) == (
            SlotState.LOADING,
            SlotState.LOADING,
            SlotState.ERROR,
        )
        assert left.at - entered.at == pytest.approx(120.0, abs=0.01)
        assert len(loads_of(fake, "beta")) == 1
        # Long after, still exactly one: nothing retries behind the caller's back.
        await anyio.sleep(3600)
        assert len(loads_of(fake, "beta")) == 1
        assert ctl.snapshot("b").state is SlotState.ERROR
        assert ctl.snapshot("a").state is SlotState.LOADED


async def test_callers_still_waiting_are_answered_when_the_controller_closes(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    fake.hanging("alpha")
    answers: list[BaseException] = []

    async def caller(ctl: Controller, slot: str, model: str) -> None:
        try:
            await ctl.load(slot, model)
        except ControllerClosedError as exc:
            answers.append(exc)

    with anyio.fail_after(5):
        async with (
            anyio.create_task_group() as callers,
            make_controller(SlotConfig("a"), SlotConfig("b")) as ctl,
        ):
            callers.start_soon(caller, ctl, "a", "alpha")  # will hang in loading
            await fake.wait_hanging("alpha")
            callers.start_soon(caller, ctl, "a", "gamma")  # postponed behind the first
            callers.start_soon(caller, ctl, "b", "beta")  # queued behind alpha on the server
            await anyio.wait_all_tasks_blocked()
    assert len(answers) == 3
    assert all("closed" in str(exc) for exc in answers)


async def test_a_model_belongs_to_one_slot_at_a_time(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        sent = len(fake.requests)
        with pytest.raises(ModelInUseError, match="in use by slot 'a'"):
            await ctl.load("b", "alpha")
        assert len(fake.requests) == sent

        outcomes: list[str] = []

        async def load(slot: str) -> None:
            try:
                outcomes.append((await ctl.load(slot, "gamma")).state.value)
            except ModelInUseError:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            tg.start_soon(load, "a")
            tg.start_soon(load, "b")
        assert sorted(outcomes) == ["loaded", "refused"]
        assert len(loads_of(fake, "gamma")) == 1


async def test_a_controller_runs_once(make_controller: ControllerFactory) -> None:
    ctl = make_controller(SlotConfig("a"))
    async with ctl:
        pass
    with pytest.raises(SlotfsmError, match="runs once"):
        async with ctl:
            pass


async def test_in_use_yields_once_the_mark_is_in_place(make_controller: ControllerFactory) -> None:
    async with make_controller(SlotConfig("a")) as ctl:
        await ctl.load("a", "alpha")
        async with ctl.in_use("a") as snap:
            assert snap.in_use == 1 and snap.model == "alpha"
        assert ctl.snapshot("a").in_use == 0


async def test_a_state_file_that_cannot_be_written_only_warns(
    make_controller: ControllerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "state"
    ctl = make_controller(SlotConfig("a"), state_path=home / "slots.json")
    with caplog.at_level(logging.WARNING, logger="slotfsm"), anyio.fail_after(5):
        async with ctl:
            # Started (a state path that is not a regular file is refused at construction);
            # now its directory becomes a plain file, so no write can succeed.
            shutil.rmtree(home)
            home.write_text("")
            stream = ctl.transitions()
            await ctl.load("a", "alpha")
        assert [t.dest async for t in stream][-1] is SlotState.LOADED  # the stream ended
    assert "could not write state file" in caplog.text
