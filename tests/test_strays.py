"""Clean-ups: models the server may hold because of a slot's work that no slot owns.

A load that timed out is not cancelled: it may still finish on the server, and
then it is unloaded at once.  These run on a real loopback socket, where (as on
the real server) an abandoned load goes on after the client gave up.
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
    fake = FakeLemonade(
        [FakeModel.for_file(n, models[n].path) for n in ("alpha", "beta")], max_models={"llm": -1}
    )
    async with fake.serve() as url:

        def build(*slots: SlotConfig) -> Controller:
            registry = [models["alpha"], models["beta"]]
            return Controller(lemonade_url=url, registry=registry, slots=slots, poll_interval=60)

        yield fake, build


async def wait_until(fake: FakeLemonade, condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await fake.wait_changed()


async def release_until_stray_gone(hang: Hang, ctl: Controller) -> None:
    """Let the hung load of alpha finish; the clean-up unloads it and says so."""
    async with ctl.transitions() as stream:
        hang.off()
        with anyio.fail_after(5):
            async for record in stream:
                if record.trigger == "cleanup" and record.reason.startswith("stray gone"):
                    assert record.slot == "chat" and record.model == "alpha"
                    return


async def time_out_on_alpha(fake: FakeLemonade, ctl: Controller) -> Hang:
    hang = fake.hanging("alpha")
    snap = await ctl.load("chat", "alpha")
    assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
    assert snap.stray == "alpha" and snap.cleanups == ("alpha",)
    return hang


async def answered_unloads(fake: FakeLemonade, count: int) -> None:
    """Wait until the fake has answered ``count`` unloads of alpha, and no more."""

    def answered() -> int:
        done = [r for r in fake.unloads() if r.done_at is not None]
        return sum(1 for r in done if r.body == {"model_name": "alpha"})

    await wait_until(fake, lambda: answered() >= count)
    assert answered() == count


def unloads_of(fake: FakeLemonade, model: str) -> int:
    return sum(1 for r in fake.unloads() if r.body == {"model_name": model})


async def test_a_late_arrival_is_unloaded_at_once(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        await release_until_stray_gone(hang, ctl)
        assert "alpha" not in fake.loaded_models()
        assert unloads_of(fake, "alpha") == 1 and len(fake.loads()) == 1
        snap = ctl.snapshot("chat")
        assert snap.state is SlotState.ERROR and snap.model is None  # not adopted
        assert snap.cleanups == () and ctl.ledger.owed() == ()
        ctl.ledger.check()


async def test_an_unload_before_the_late_arrival_keeps_watching_for_it(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        snap = await ctl.unload("chat")  # the load is still in flight: it may still come
        assert snap.state is SlotState.IDLE and snap.cleanups == ("alpha",)
        await release_until_stray_gone(hang, ctl)
        assert ctl.snapshot("chat").cleanups == ()
        assert "alpha" not in fake.loaded_models()
        assert unloads_of(fake, "alpha") == 1


async def test_loading_another_model_leaves_only_it_on_the_server(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        await release_until_stray_gone(hang, ctl)
        snap = await ctl.load("chat", "beta")
        assert (snap.state, snap.model, snap.cleanups) == (SlotState.LOADED, "beta", ())
        assert fake.loaded_models() == ["beta"]


async def test_reset_forgets_the_failure_but_not_the_late_arrival(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    """After reset, the late arrival is still the controller's to unload."""
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        snap = await ctl.reset("chat")
        assert (snap.state, snap.error, snap.cleanups) == (SlotState.IDLE, None, ("alpha",))
        assert ctl.ledger.owed() == ("alpha",)
        await release_until_stray_gone(hang, ctl)
        assert "alpha" not in fake.loaded_models()
        assert unloads_of(fake, "alpha") == 1
        assert ctl.ledger.owed() == ()


async def test_a_stray_blocks_other_slots_from_its_model_but_not_its_own(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2), SlotConfig("other")) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        with pytest.raises(ModelInUseError, match="may still have model 'alpha'"):
            await ctl.load("other", "alpha")
        hang.off()
        snap = await ctl.load("chat", "alpha")  # the slot that left it may take it again
        assert (snap.state, snap.model) == (SlotState.LOADED, "alpha")
        await ctl.refresh()
        assert fake.loaded_models() == ["alpha"]
        assert ctl.snapshot("chat").state is SlotState.LOADED
        ctl.ledger.check()


async def test_callers_of_the_same_hung_load_share_one_request(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    hang = fake.hanging("alpha")
    async with build(SlotConfig("chat", load_timeout=0.3)) as ctl:
        results = []

        async def load() -> None:
            results.append(await ctl.load("chat", "alpha"))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(load)
        assert len(fake.loads()) == 1
        assert [r.error.kind for r in results if r.error] == [PreloadError.LOAD_TIMEOUT] * 3
        # One timeout, not three in a row: every caller was told of the same failure at
        # the same moment, and the slot left loading for error once.
        assert len({(r.since, r.error) for r in results}) == 1, results
        moves = [(t.source, t.dest) for t in results[0].history]
        assert moves.count((SlotState.LOADING, SlotState.ERROR)) == 1, moves
        hang.off()


async def test_a_failed_clean_up_is_retried_at_each_reading_that_lists_it(
    served: tuple[FakeLemonade, Callable[..., Controller]],
) -> None:
    fake, build = served
    async with build(SlotConfig("chat", load_timeout=0.2)) as ctl:
        hang = await time_out_on_alpha(fake, ctl)
        with fake.failing_unload("alpha", "backend would not stop"):
            hang.off()
            await answered_unloads(fake, 1)  # the clean-up on arrival, refused
            for tries in (2, 3):  # each reading that lists it tries once more, no more
                await ctl.refresh()
                await answered_unloads(fake, tries)
            assert ctl.snapshot("chat").cleanups == ("alpha",)
        async with ctl.transitions() as stream:
            await ctl.refresh()  # one reading, one more try, and this one works
            with anyio.fail_after(5):
                async for record in stream:
                    if record.reason.startswith("stray gone"):
                        break
        await ctl.refresh()  # the reading no longer lists it: nothing more is sent
        assert ctl.snapshot("chat").cleanups == () and ctl.ledger.owed() == ()
        assert fake.loaded_models() == [] and unloads_of(fake, "alpha") == 4
