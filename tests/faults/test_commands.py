"""Commands and concurrency: a storm of commands with faults, cancellation, bad input.

The storm's machinery and its invariants are in ``storm.py``, next to this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sniffio
import trio
from kit import ControllerFactory, virtual_time
from threads import threads_in

import slotfsm.controller
import slotfsm.preload
from faults.storm import Storm, StormSettings, ValidationSpy, World
from slotfsm import (
    ConfigError,
    Controller,
    ControllerClosedError,
    ModelEntry,
    ModelInUseError,
    PreloadError,
    Registry,
    RegistryError,
    SlotConfig,
    SlotfsmError,
    SlotSnapshot,
    SlotState,
    UnknownModelError,
    UnknownSlotError,
)
from slotfsm.errors import Failure
from slotfsm.stream import TransitionStream
from slotfsm.testing import FakeLemonade, FakeModel, Hang

pytestmark = pytest.mark.anyio


# -- the storm --------------------------------------------------------------------------


async def run_storm(
    directory: Path, spy: ValidationSpy, settings: StormSettings, seed: int
) -> Storm:
    world = World(directory, settings, random.Random(seed))
    storm = Storm(world, spy, seed)
    started = time.monotonic()
    async with storm.controller() as ctl:
        await storm.batch(ctl, settings.commands)
    print(f"{storm.report()} wall={time.monotonic() - started:.1f}s")
    print("outcomes:", dict(sorted(storm.outcomes.items())))
    assert not storm.problems, storm.report() + "\n" + "\n".join(storm.problems)
    return storm


def kinds_seen(storm: Storm) -> set[str]:
    return {outcome.rsplit(" ", 1)[-1] for outcome in storm.outcomes}


@virtual_time
async def test_a_storm_of_commands_under_faults_keeps_every_promise(
    tmp_path: Path, validation_spy: ValidationSpy, storm_seed: int
) -> None:
    """2,400 commands from 40 callers on 24 slots, server and file faults, 5 s and 2 s timeouts."""
    storm = await run_storm(tmp_path, validation_spy, StormSettings(), storm_seed)
    # It was a storm: every kind of trouble happened, and still every promise held.
    assert storm.commands == 2400 and storm.loads_sent > 500
    assert storm.world.fake.evict_all_count > 0
    seen = kinds_seen(storm)
    for kind in (PreloadError.LOAD_TIMEOUT, PreloadError.LOAD_FAILED, PreloadError.SIZE_MISMATCH):
        assert kind.name in seen, seen
    assert {"hang", "crash", "health", "file", "restart"} <= set(storm.world.injected)


async def test_a_small_storm_in_real_time_keeps_every_promise(
    tmp_path: Path, validation_spy: ValidationSpy, storm_seed: int
) -> None:
    """The same storm on asyncio and on trio, in real time, with tiny timeouts."""
    settings = StormSettings(
        slots=20,
        commands=400,
        callers=16,
        load_timeouts=(0.25, 0.1),
        idle_timeout=0.5,
        poll_interval=0.05,
        http_timeout=0.1,
        think_time=0.01,
        delays=(0.0, 0.0, 0.01, 0.05, 0.4),
        bound=30.0,
    )
    storm = await run_storm(tmp_path, validation_spy, settings, storm_seed)
    assert storm.commands == 400 and storm.loads_sent > 50


# -- cancellation -------------------------------------------------------------------------


def live_tasks() -> int:
    """How many tasks exist in this event loop right now."""
    if sniffio.current_async_library() == "asyncio":
        return len(asyncio.all_tasks())

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def settle(ctl: Controller, changes: TransitionStream, slot: str) -> SlotSnapshot:
    """Wait, on the slot's own transitions, until it rests."""
    while not ctl.snapshot(slot).state.settled:
        await changes.__anext__()
    return ctl.snapshot(slot)


async def cancel_a_caller_of_a_hung_load(fake: FakeLemonade, ctl: Controller) -> Hang:
    """Start ``load("b", "beta")`` on a hung server, then cancel the caller."""
    hang = fake.hanging("beta")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as caller:
            caller.start_soon(ctl.load, "b", "beta")
            await fake.wait_hanging("beta")
            caller.cancel_scope.cancel()
    # The caller is gone; its command is not.
    assert ctl.snapshot("b").state is SlotState.LOADING
    assert fake.loads_in_flight == 1
    return hang


@pytest.mark.parametrize("outcome", ["answered", "failed"])
async def test_a_cancelled_caller_leaves_its_load_to_finish_truthfully(
    fake: FakeLemonade, make_controller: ControllerFactory, outcome: str
) -> None:
    """Cancelling ``await ctl.load()`` abandons the wait only: the load goes on and settles."""
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        async with ctl.transitions() as changes:
            hang = await cancel_a_caller_of_a_hung_load(fake, ctl)
            if outcome == "failed":
                fake.failing("beta", "llama-server failed to start")  # and it evicts everything
            hang.off()
            with anyio.fail_after(5):
                snap = await settle(ctl, changes, "b")
        if outcome == "answered":
            assert (snap.state, snap.model, snap.error) == (SlotState.LOADED, "beta", None)
            assert fake.loaded_models() == ["alpha", "beta"]
        else:
            assert snap.state is SlotState.ERROR and snap.model is None
            assert snap.error is not None and snap.error.kind is PreloadError.LOAD_FAILED
            assert fake.loaded_models() == []
            # the evict-all took slot a's model, and slot a says so
            a = ctl.snapshot("a")
            assert a.state is SlotState.IDLE
            assert a.error is not None and a.error.kind is PreloadError.EVICTED
        assert [r.body["model_name"] for r in fake.loads()] == ["alpha", "beta"]  # once each
        # The slot is not corrupted: the next command works.
        snap = await ctl.load("b", "gamma")
        assert (snap.state, snap.model, snap.error) == (SlotState.LOADED, "gamma", None)
        assert "gamma" in fake.loaded_models() and "beta" not in fake.loaded_models()


@virtual_time
async def test_a_cancelled_caller_leaves_its_load_to_time_out_truthfully(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """Nobody waits for the abandoned load any more; the slot's own timer still ends it."""
    async with make_controller(SlotConfig("a"), SlotConfig("b", load_timeout=30)) as ctl:
        await ctl.load("a", "alpha")
        async with ctl.transitions() as changes:
            hang = await cancel_a_caller_of_a_hung_load(fake, ctl)
            started = anyio.current_time()
            snap = await settle(ctl, changes, "b")  # nobody waits for it, the timer still runs
        assert anyio.current_time() - started == pytest.approx(30, abs=0.1)
        assert snap.state is SlotState.ERROR and snap.model is None
        assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
        # Not cancelled: the server is still at it, and the slot says it may arrive.
        assert fake.loads_in_flight == 1 and fake.loaded_models() == ["alpha"]
        assert snap.cleanups == ("beta",)
        assert len(fake.loads()) == 2  # alpha, and beta once: never retried
        async with ctl.transitions() as changes:
            hang.off()  # it arrives late: unloaded at once
            with anyio.fail_after(5):
                async for record in changes:
                    if record.trigger == "cleanup":
                        assert (record.slot, record.model) == ("b", "beta"), record
                        break
        assert ctl.snapshot("b").cleanups == () and "beta" not in fake.loaded_models()
        snap = await ctl.load("b", "gamma")
        assert (snap.state, snap.model, snap.error) == (SlotState.LOADED, "gamma", None)
        assert fake.loaded_models() == ["alpha", "gamma"]


async def test_a_cancelled_caller_of_a_postponed_command_does_not_withdraw_it(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """A command waiting behind a busy slot still runs after its caller gave up."""
    async with make_controller(SlotConfig("chat")) as ctl:
        hang = fake.hanging("alpha")
        async with ctl.transitions() as changes:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as first:
                    first.start_soon(ctl.load, "chat", "alpha")
                    await fake.wait_hanging("alpha")
                    async with anyio.create_task_group() as second:
                        second.start_soon(ctl.load, "chat", "beta")
                        await anyio.wait_all_tasks_blocked()  # beta waits behind alpha
                        second.cancel_scope.cancel()
                    hang.off()
                while (
                    ctl.snapshot("chat").model != "beta" or not ctl.snapshot("chat").state.settled
                ):
                    await changes.__anext__()
        assert ctl.snapshot("chat").state is SlotState.LOADED
        assert [r.body["model_name"] for r in fake.loads()] == ["alpha", "beta"]
        assert fake.loaded_models() == ["beta"]


def progress_signal(
    monkeypatch: pytest.MonkeyPatch, model: str
) -> tuple[threading.Event, list[int]]:
    """Make the controller report the hashing of ``model``; set once a chunk is hashed."""
    started = threading.Event()
    hashed: list[int] = []
    real = slotfsm.controller.validate

    async def validate(entry: ModelEntry, **options: Any) -> Failure | None:
        def progress(done: int, total: int) -> None:
            hashed.append(done)
            started.set()

        if entry.name != model:
            return await real(entry, **options)
        return await real(entry, progress=progress, **options)

    monkeypatch.setattr(slotfsm.controller, "validate", validate)
    return started, hashed


async def leave_while(
    fake: FakeLemonade,
    ctl: Controller,
    caplog: pytest.LogCaptureFixture,
    slot: str,
    model: str,
    busy: Callable[[], Awaitable[None]],
) -> None:
    """Enter, load alpha into slot a, start ``load(slot, model)``, wait for ``busy``, leave.

    Leaving must not wait for the work under way (a hung load, or a hash that
    the caller checks was stopped part-way), fail the abandoned caller with
    ControllerClosedError, leave no task and no hashing thread behind, send
    nothing more, and log what it left loaded on the server.
    """
    tasks = live_tasks()
    closed: list[BaseException] = []

    async def caller() -> None:
        try:
            await ctl.load(slot, model)
        except ControllerClosedError as exc:
            closed.append(exc)

    with caplog.at_level(logging.INFO, logger="slotfsm"), anyio.fail_after(10):
        async with anyio.create_task_group() as callers, ctl:
            await ctl.load("a", "alpha")
            callers.start_soon(caller)
            await busy()
            sent = len(fake.requests)
    assert len(closed) == 1 and "closed" in str(closed[0])
    assert threads_in(slotfsm.preload) == 0
    assert live_tasks() == tasks
    assert fake.loads_in_flight == 0
    assert [r.route for r in fake.requests[sent:]] == []  # nothing sent on the way out
    assert fake.loaded_models() == ["alpha"]  # left loaded, as documented
    left = [r.getMessage() for r in caplog.records if "left on the server" in r.getMessage()]
    assert len(left) == 1 and "alpha=a" in left[0], left  # model=slot


async def test_leaving_the_controller_during_a_hash_returns_promptly(
    tmp_path: Path,
    fake: FakeLemonade,
    models: dict[str, ModelEntry],
    make_controller: ControllerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    size = 8 * 1024**3  # sparse: instant to make, seconds to hash
    path = tmp_path / "big.bin"
    with path.open("wb") as file:
        file.truncate(size)
    models["big"] = ModelEntry(name="big", path=path, sha256="0" * 64, size=size, gguf=False)
    fake.add_model(FakeModel.for_file("big", path))
    started, hashed = progress_signal(monkeypatch, "big")
    ctl = make_controller(SlotConfig("a"), SlotConfig("big"))

    async def hashing() -> None:
        await anyio.to_thread.run_sync(started.wait)
        assert threads_in(slotfsm.preload) == 1

    await leave_while(fake, ctl, caplog, "big", "big", hashing)
    assert 0 < hashed[-1] < size  # leaving stopped the hash part-way: it did not wait for it
    assert [r.body["model_name"] for r in fake.loads()] == ["alpha"]


async def test_leaving_the_controller_during_a_hung_load_returns_promptly(
    fake: FakeLemonade, make_controller: ControllerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake.hanging("beta")  # never released: leaving cannot have waited for it
    ctl = make_controller(SlotConfig("a"), SlotConfig("b"))
    await leave_while(fake, ctl, caplog, "b", "beta", partial(fake.wait_hanging, "beta"))
    assert [r.body["model_name"] for r in fake.loads()] == ["alpha", "beta"]
    assert fake.unloads() == []


# -- bad input ----------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")

BAD_CALLS: list[tuple[str, Callable[[Controller], Any], type[Exception], str]] = [
    ("unknown slot", lambda c: c.load("nope", "alpha"), UnknownSlotError, "no slot named 'nope'"),
    ("unknown model", lambda c: c.load("chat", "nope"), UnknownModelError, "no model named 'nope'"),
    ("empty slot", lambda c: c.load("", "alpha"), UnknownSlotError, "no slot named ''"),
    ("empty model", lambda c: c.load("chat", ""), UnknownModelError, "no model named ''"),
    ("blank model", lambda c: c.load("chat", " "), UnknownModelError, "no model named ' '"),
    ("None slot", lambda c: c.load(None, "alpha"), UnknownSlotError, "no slot named None"),
    ("None model", lambda c: c.load("chat", None), UnknownModelError, "no model named None"),
    ("newline slot", lambda c: c.load("ch\nat", "alpha"), UnknownSlotError, r"'ch\nat'"),
    ("NUL model", lambda c: c.load("chat", "alp\x00ha"), UnknownModelError, r"'alp\x00ha'"),
    ("ESC slot", lambda c: c.unload("\x1b[2Jchat"), UnknownSlotError, r"'\x1b[2Jchat'"),
    ("unload unknown", lambda c: c.unload("nope"), UnknownSlotError, "no slot named 'nope'"),
    ("reset unknown", lambda c: c.reset("CHAT"), UnknownSlotError, "no slot named 'CHAT'"),
    ("padded slot", lambda c: c.reset(" chat"), UnknownSlotError, "no slot named ' chat'"),
    ("snapshot unknown", lambda c: c.snapshot("nope"), UnknownSlotError, "(slots: 'chat')"),
    ("zero buffer", lambda c: c.transitions(buffer=0), ConfigError, "buffer must be >= 1"),
    ("negative buffer", lambda c: c.transitions(buffer=-5), ConfigError, "buffer must be >= 1"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
async def test_bad_names_raise_at_the_call_and_send_nothing(
    fake: FakeLemonade,
    make_controller: ControllerFactory,
    call: Callable[[Controller], Any],
    error: type[Exception],
    message: str,
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        before = fake.requests
        with pytest.raises(error) as raised:
            result = call(ctl)
            if inspect.isawaitable(result):
                await result
        text = str(raised.value)
        assert message in text
        assert isinstance(raised.value, SlotfsmError)
        assert not any(c in text for c in "\n\r\x00\x1b")  # names are shown escaped
        assert fake.requests == before
        assert ctl.snapshot("chat").state is SlotState.LOADED  # and nothing else changed


async def test_in_use_of_an_unknown_slot_raises_and_sends_nothing(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        before = fake.requests
        with pytest.raises(UnknownSlotError, match="no slot named 'nope'"):
            async with ctl.in_use("nope"):
                pytest.fail("entered in_use of an unknown slot")
        assert fake.requests == before


BAD_SLOTS: list[tuple[str, Callable[[], SlotConfig], str]] = [
    ("empty name", lambda: SlotConfig(""), "non-empty string"),
    ("blank name", lambda: SlotConfig("  "), "non-empty string"),
    ("None name", lambda: SlotConfig(None), "non-empty string"),
    ("int name", lambda: SlotConfig(7), "non-empty string"),
    ("newline", lambda: SlotConfig("a\nb"), "control characters"),
    ("NUL", lambda: SlotConfig("a\x00"), "control characters"),
    ("DEL", lambda: SlotConfig("a\x7f"), "control characters"),
    ("negative load", lambda: SlotConfig("a", load_timeout=-1), "load_timeout must be finite"),
    ("zero load", lambda: SlotConfig("a", load_timeout=0), "load_timeout must be finite and > 0"),
    ("NaN load", lambda: SlotConfig("a", load_timeout=NAN), "load_timeout must be finite"),
    ("inf load", lambda: SlotConfig("a", load_timeout=INF), "load_timeout must be finite"),
    ("-inf load", lambda: SlotConfig("a", load_timeout=-INF), "load_timeout must be finite"),
    ("None load", lambda: SlotConfig("a", load_timeout=None), "load_timeout must be a number"),
    ("bool load", lambda: SlotConfig("a", load_timeout=True), "load_timeout must be a number"),
    ("str load", lambda: SlotConfig("a", load_timeout="5"), "load_timeout must be a number"),
    ("negative idle", lambda: SlotConfig("a", idle_timeout=-300), "idle_timeout must be finite"),
    ("NaN idle", lambda: SlotConfig("a", idle_timeout=NAN), "idle_timeout must be finite"),
    ("inf idle", lambda: SlotConfig("a", idle_timeout=INF), "idle_timeout must be finite"),
    ("zero ctx", lambda: SlotConfig("a", ctx_size=0), "ctx_size must be a positive int"),
    ("negative ctx", lambda: SlotConfig("a", ctx_size=-1), "ctx_size must be a positive int"),
    ("float ctx", lambda: SlotConfig("a", ctx_size=4096.0), "ctx_size must be a positive int"),
    ("reserved option", lambda: SlotConfig("a", extra_options={"model_name": "x"}), "set by"),
    ("empty option", lambda: SlotConfig("a", extra_options={"": 1}), "non-empty strings"),
    ("list option", lambda: SlotConfig("a", extra_options={"x": [1]}), "string, number or bool"),
]


@pytest.mark.parametrize(
    ("build", "message"), [c[1:] for c in BAD_SLOTS], ids=[c[0] for c in BAD_SLOTS]
)
def test_bad_slot_configuration_is_refused(build: Callable[[], SlotConfig], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build()
    assert message in str(raised.value)
    assert not any(c in str(raised.value) for c in "\n\x00")


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["NaN", "inf", "-inf"])
def test_a_non_finite_load_option_is_refused_at_configuration(value: float) -> None:
    """The client refuses it at ``/load`` time; the configuration should, at once."""
    with pytest.raises(ConfigError, match="finite"):
        SlotConfig("a", extra_options={"rope_freq_base": value})


def controller_with(models: dict[str, ModelEntry], **options: Any) -> Controller:
    arguments: dict[str, Any] = {
        "lemonade_url": "http://lemonade",
        "registry": list(models.values()),
        "slots": [SlotConfig("a")],
    }
    arguments.update(options)
    return Controller(**arguments)


BAD_CONTROLLERS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("duplicate slots", {"slots": [SlotConfig("a"), SlotConfig("a")]}, ConfigError, "duplicate"),
    ("str slot", {"slots": ["a"]}, ConfigError, "must be SlotConfig values, got str"),
    ("dict slot", {"slots": [{"name": "a"}]}, ConfigError, "must be SlotConfig values, got dict"),
    ("None slot", {"slots": [SlotConfig("a"), None]}, ConfigError, "got NoneType"),
    ("NaN poll", {"poll_interval": NAN}, ConfigError, "poll_interval must be finite"),
    ("inf poll", {"poll_interval": INF}, ConfigError, "poll_interval must be finite"),
    ("negative poll", {"poll_interval": -30}, ConfigError, "poll_interval must be finite"),
    ("zero poll", {"poll_interval": 0}, ConfigError, "poll_interval must be finite"),
    ("str poll", {"poll_interval": "30"}, ConfigError, "poll_interval must be a number"),
    ("zero history", {"history": 0}, ConfigError, "history must be >= 1"),
    ("bad registry", {"registry": ["alpha"]}, RegistryError, "must be ModelEntry"),
]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [c[1:] for c in BAD_CONTROLLERS],
    ids=[c[0] for c in BAD_CONTROLLERS],
)
def test_bad_controller_configuration_is_refused_at_construction(
    fake: FakeLemonade,
    models: dict[str, ModelEntry],
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error) as raised:
        controller_with(models, transport=fake.transport(), **options)
    assert message in str(raised.value)
    assert fake.requests == []


async def test_a_controller_with_no_slots_runs_and_sends_no_command(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller() as ctl:
        assert ctl.slot_names == () and ctl.snapshots() == {}
        assert await ctl.refresh() is not None
        with pytest.raises(UnknownSlotError, match="no slot named 'a'"):
            await ctl.load("a", "alpha")
    assert [r.route for r in fake.requests if "load" in r.route] == []


BAD_CLIENT_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("negative http_timeout", {"http_timeout": -1}, "timeout"),
    ("zero http_timeout", {"http_timeout": 0}, "timeout"),
    ("NaN http_timeout", {"http_timeout": NAN}, "timeout"),
    ("inf http_timeout", {"http_timeout": INF}, "timeout"),
    ("not http", {"lemonade_url": "ftp://lemonade"}, "(?i)url"),
    ("empty api_key", {"api_key": ""}, "api_key"),
    ("unknown hash policy", {"hash_policy": "sometimes"}, "(?i)hash.?policy"),
]


@pytest.mark.parametrize(
    ("options", "message"),
    [c[1:] for c in BAD_CLIENT_OPTIONS],
    ids=[c[0] for c in BAD_CLIENT_OPTIONS],
)
def test_bad_client_options_are_configuration_errors(
    fake: FakeLemonade, models: dict[str, ModelEntry], options: dict[str, Any], message: str
) -> None:
    """README: bad configuration raises ConfigError (a SlotfsmError), whatever the option."""
    with pytest.raises(ConfigError, match=message):
        controller_with(models, transport=fake.transport(), **options)
    assert fake.requests == []


def test_a_registry_with_duplicate_names_is_refused(models: dict[str, ModelEntry]) -> None:
    alpha = models["alpha"]
    twin = ModelEntry(name="alpha", path=models["beta"].path, sha256="1" * 64, size=1)
    with pytest.raises(RegistryError, match="duplicate model name 'alpha' in the registry"):
        Registry([alpha, models["beta"], twin])
    with pytest.raises(RegistryError, match="duplicate model name 'alpha'"):
        controller_with(models, registry=[alpha, twin])
    for name, problem in [("", "non-empty"), ("a\nb", "control"), ("a\x00", "control")]:
        with pytest.raises(RegistryError, match=problem):
            ModelEntry(name=name, path=alpha.path, sha256=alpha.sha256, size=alpha.size)


async def test_commands_outside_a_running_controller_raise(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    ctl = make_controller(SlotConfig("chat"))
    with pytest.raises(SlotfsmError, match="not running"):
        await ctl.load("chat", "alpha")
    async with ctl:
        with pytest.raises(SlotfsmError, match="runs once"):
            async with ctl:
                pytest.fail("entered a running controller twice")
        await ctl.load("chat", "alpha")
    sent = fake.requests
    for call in (ctl.load("chat", "beta"), ctl.unload("chat"), ctl.reset("chat"), ctl.refresh()):
        with pytest.raises(SlotfsmError, match="not running"):
            await call
    with pytest.raises(SlotfsmError, match="not running"):
        ctl.snapshot("chat")
    with pytest.raises(SlotfsmError, match="runs once"):
        async with ctl:
            pytest.fail("ran a controller twice")
    assert fake.requests == sent


# -- concurrency corners the storm found ----------------------------------------------------


async def test_every_slot_tells_the_truth_once_concurrent_loads_return(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """Alpha answers 200, then another slot's failed start evicts everything.

    ADR-0007 §2: ``/health`` is read after every load and every slot has
    handled that reading before ``load()`` returns; so once both loads have
    returned, no slot may still claim alpha.
    """
    fake.failing("gamma", "llama-server failed to start")
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        hang = fake.hanging("alpha")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg, ctl.transitions() as changes:
                tg.start_soon(ctl.load, "a", "alpha")
                await fake.wait_hanging("alpha")
                tg.start_soon(ctl.load, "b", "gamma")
                while ctl.snapshot("b").state is not SlotState.LOADING:
                    await changes.__anext__()
                await anyio.wait_all_tasks_blocked()  # gamma's /load waits behind alpha's
                assert fake.loads_in_flight == 2
                hang.off()  # alpha loads; gamma's start fails and evicts it
        assert fake.loaded_models() == []
        assert fake.evict_all_count == 1
        a = ctl.snapshot("a")
        assert a.state is not SlotState.LOADED, a
        assert a.error is not None and a.error.kind is PreloadError.EVICTED


@virtual_time
async def test_a_timed_out_reload_is_not_forgotten(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """Reloading the model a slot holds times out behind another slot's hung load.

    The model never left the server.  Whatever the slot says about it, it
    must not lose track of it: after its next load, the server must not hold
    a model that no slot manages.
    """
    slots = SlotConfig("a", load_timeout=5), SlotConfig("b", load_timeout=60)
    async with make_controller(*slots) as ctl:
        await ctl.load("a", "alpha")
        hang = fake.hanging("beta")
        async with anyio.create_task_group() as tg, ctl.transitions() as changes:
            tg.start_soon(ctl.load, "b", "beta")
            await fake.wait_hanging("beta")
            snap = await ctl.load("a", "alpha")  # queued behind beta: times out
            assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
            assert "alpha" in fake.loaded_models()  # it never left
            # Before any /health reading can show it, the caller loads another model.
            tg.start_soon(ctl.load, "a", "gamma")
            while ctl.snapshot("a").state is not SlotState.LOADING:
                await changes.__anext__()
            await anyio.wait_all_tasks_blocked()  # gamma's /load waits behind beta's
            hang.off()
        snap = ctl.snapshot("a")
        assert (snap.state, snap.model) == (SlotState.LOADED, "gamma")
        await ctl.refresh()
        await anyio.wait_all_tasks_blocked()
        held = {s.model for s in ctl.snapshots().values() if s.state is SlotState.LOADED}
        assert set(fake.loaded_models()) == held == {"beta", "gamma"}


class HeldUnloads(httpx.AsyncBaseTransport):
    """Holds every ``/unload`` before it reaches the server until ``gate`` is set."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.gate = anyio.Event()
        self.waiting = 0
        self.arrived = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/unload") and not self.gate.is_set():
            self.waiting += 1
            self.arrived.set()
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        return await self.inner.handle_async_request(request)


@virtual_time
async def test_the_unload_of_a_late_arrival_survives_the_next_command(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """ADR-0007 §3: a model that arrives after its load timed out is unloaded, once.

    Here the late model is seen, the unload is on its way (held up on the
    network), and the caller's next command comes first.  The stray must
    still leave the server.
    """
    network = HeldUnloads(fake.transport())
    slots = SlotConfig("a", load_timeout=5), SlotConfig("b", load_timeout=60)
    async with make_controller(*slots, transport=network) as ctl:
        await ctl.load("a", "alpha")
        hang = fake.hanging("beta")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ctl.load, "b", "beta")
            await fake.wait_hanging("beta")
            await ctl.load("a", "alpha")  # times out; alpha is still on the server
            hang.off()
        await ctl.refresh()  # a sees its stray and sends the unload...
        with anyio.fail_after(5):
            await network.arrived.wait()  # ...which the network holds up
        async with anyio.create_task_group() as tg, ctl.transitions() as changes:
            tg.start_soon(ctl.load, "a", "gamma")  # the caller moves on first
            while ctl.snapshot("a").state is SlotState.ERROR:
                await changes.__anext__()
            network.gate.set()
        snap = ctl.snapshot("a")
        assert (snap.state, snap.model, snap.stray) == (SlotState.LOADED, "gamma", None)
        await ctl.refresh()
        await anyio.wait_all_tasks_blocked()
        assert network.waiting == 0
        assert sorted(fake.loaded_models()) == ["beta", "gamma"]


class FailingUnloads(httpx.AsyncBaseTransport):
    """Answers ``/unload`` with a 500, without the server hearing of it, while ``on``."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.on = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.on and request.url.path.endswith("/unload"):
            return httpx.Response(500, json={"error": "Internal server error"})
        return await self.inner.handle_async_request(request)


async def test_a_swap_whose_unload_fails_keeps_track_of_the_old_model(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """Swapping alpha for beta: the unload of alpha fails, so alpha is still loaded.

    The slot must not forget alpha: an explicit ``unload`` (the documented
    way out of an unload that failed) must remove it from the server.
    """
    network = FailingUnloads(fake.transport())
    async with make_controller(SlotConfig("chat"), transport=network) as ctl:
        await ctl.load("chat", "alpha")
        network.on = True
        snap = await ctl.load("chat", "beta")
        # The old model is still there and still the slot's: it stays loaded, with the failure.
        assert (snap.state, snap.model) == (SlotState.LOADED, "alpha")
        assert snap.error is not None and snap.error.kind is PreloadError.UNLOAD_FAILED
        assert "'beta' was not sent, 'alpha' is kept" in snap.error.message
        assert ctl.ledger.owner_of("alpha") == "chat" and ctl.ledger.owed() == ()
        assert fake.loaded_models() == ["alpha"]  # beta never sent: the old model is there
        assert [r.body["model_name"] for r in fake.loads()] == ["alpha"]
        network.on = False
        snap = await ctl.unload("chat")
        assert (snap.state, snap.error) == (SlotState.IDLE, None)
        assert fake.loaded_models() == []


async def test_a_cancelled_caller_does_not_release_the_claim_of_its_postponed_load(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    """A model is never held by two slots, even when a caller gives up on a queued load."""
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:

        async def load_beta_into_b() -> None:
            with contextlib.suppress(ModelInUseError):  # refusing it is one right answer
                await ctl.load("b", "beta")

        hang = fake.hanging("alpha")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ctl.load, "a", "alpha")
                await fake.wait_hanging("alpha")
                async with anyio.create_task_group() as caller:
                    caller.start_soon(ctl.load, "a", "beta")  # waits behind alpha
                    await anyio.wait_all_tasks_blocked()
                    caller.cancel_scope.cancel()  # the caller gives up; the command stays
                tg.start_soon(load_beta_into_b)
                await anyio.wait_all_tasks_blocked()
                hang.off()
            await ctl.reset("a")  # queued behind a's pending load: returns once it ran
        await ctl.refresh()
        snaps = ctl.snapshots()
        held = [s.model for s in snaps.values() if s.state is SlotState.LOADED]
        assert len(held) == len(set(held)), snaps
        assert set(held) == set(fake.loaded_models())
