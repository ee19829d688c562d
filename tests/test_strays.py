"""Strays: models the server may hold on a slot's behalf that the slot does not manage.

A load that timed out may still finish on the server; an unload may fail.  These
run on a real loopback socket, where (as on the real server) an abandoned load
goes on after the client gave up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from slotfsm import (
    Controller,
    ModelEntry,
    ModelInUseError,
    PreloadError,
    SlotConfig,
    SlotState,
)
from slotfsm.testing import FakeLemonade, FakeModel, Hang

pytestmark = pytest.mark.anyio


@pytest.fixture
async def served(
    models: dict[str, ModelEntry],
) -> AsyncIterator[tuple[FakeLemonade, Callable[..., Controller]]]:
    fake = FakeLemonade([FakeModel(n) for n in ("alpha", "beta")], max_models={"llm": -1})
    async with fake.serve() as url:

        def build(*slots: SlotConfig) -> Controller:
            registry = [models["alpha"], models["beta"]]
            return Controller(lemonade_url=url, registry=registry, slots=slots, poll_interval=60)

        yield fake, build


async def wait_until(fake: FakeLemonade, condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await fake.wait_changed()


async def refresh_until_stray_gone(ctl: Controller) -> None:
    """Poll once; the slot sees its stray, unloads it and says so."""
    async with ctl.transitions() as stream:
        await ctl.refresh()
        with anyio.fail_after(5):
            async for record in stream:
                if record.reason == "stray gone":
                    return


async def time_out_on_alpha(fake: FakeLemonade, ctl: Controller) -> Hang:
    hang = fake.hanging("alpha")
    snap = await ctl.load("chat", "alpha")
    assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
    assert snap.stray == "alpha"
    return hang


def unloads_of(fake: FakeLemonade, model: str) -> int:
    return sum(1 for r in fake.unloads() if r.body == {"model_name": model})


async def test_a_late_arrival_is_unloaded_once_seen(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        hang.off()
        await wait_until(fake, lambda: "alpha" in fake.loaded_models())
        await refresh_until_stray_gone(ctl)
        assert "alpha" not in fake.loaded_models()
        assert unloads_of(fake, "alpha") == 1 and len(fake.loads()) == 1
        snap = ctl.snapshot("chat")
        assert snap.state is SlotState.ERROR and snap.stray is None  # not adopted


async def test_an_unload_before_the_late_arrival_keeps_watching_for_it(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        snap = await ctl.unload("chat")  # the server says "not loaded": it may still come
        assert snap.state is SlotState.IDLE and snap.stray == "alpha"
        hang.off()
        await wait_until(fake, lambda: "alpha" in fake.loaded_models())
        await refresh_until_stray_gone(ctl)
        assert ctl.snapshot("chat").stray is None
        assert "alpha" not in fake.loaded_models()


async def test_loading_another_model_unloads_the_stray_first(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        hang.off()
        await wait_until(fake, lambda: "alpha" in fake.loaded_models())
        snap = await ctl.load("chat", "beta")
        assert (snap.state, snap.model, snap.stray) == (SlotState.LOADED, "beta", None)
        assert fake.loaded_models() == ["beta"]


async def test_reset_forgets_the_stray_and_leaves_it_alone(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    """Documented: after reset, a late arrival is left alone like any model we did not load."""
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        snap = await ctl.reset("chat")
        assert (snap.state, snap.stray) == (SlotState.IDLE, None)
        hang.off()
        await wait_until(fake, lambda: "alpha" in fake.loaded_models())
        await ctl.refresh()
        assert fake.unloads() == []


async def test_a_stray_blocks_other_slots_from_its_model(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2), SlotConfig("other")) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        with pytest.raises(ModelInUseError, match="may still hold"):
            await ctl.load("other", "alpha")
        hang.off()


async def test_callers_of_the_same_hung_load_share_one_request(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    hang = fake.hanging("alpha")
    async with build(SlotConfig("chat", load_timeout=0.3)) as ctl:
        results = []

        async def load() -> None:
            results.append(await ctl.load("chat", "alpha"))

        started = anyio.current_time()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(load)
        assert anyio.current_time() - started < 0.3 * 2  # one timeout, not three in a row
        assert len(fake.loads()) == 1
        assert [r.error.kind for r in results if r.error] == [PreloadError.LOAD_TIMEOUT] * 3
        hang.off()


async def test_a_failed_stray_unload_is_not_retried_alone_but_unload_retries(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        hang.off()
        await wait_until(fake, lambda: "alpha" in fake.loaded_models())
        failing = fake.failing_unload("alpha", "backend would not stop")
        await ctl.refresh()
        await wait_until(fake, lambda: unloads_of(fake, "alpha") == 1)
        for _ in range(3):
            await ctl.refresh()
        assert unloads_of(fake, "alpha") == 1  # tried once on sight, never again alone
        assert ctl.snapshot("chat").stray == "alpha"
        failing.off()
        snap = await ctl.unload("chat")
        assert (snap.state, snap.stray) == (SlotState.IDLE, None)
        assert fake.loaded_models() == []
