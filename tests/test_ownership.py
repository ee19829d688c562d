"""Ownership of models under concurrency, timeouts, swaps and restarts (ADR-0007 §4).

Named tests for the behaviours the residency ledger exists for, then a
Hypothesis test of whole programs: commands, cancellations, timeouts, server
faults and controller restarts on one state file, with the oracle
(tests/oracle.py) checked after every step and at quiescence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import hypothesis.strategies as st
import pytest
import trio
from checks import loads_of
from hypothesis import given, settings
from kit import ControllerFactory, examples, virtual_clock, virtual_time
from oracle import check_quiescent, check_step, fake_settled

from slotfsm import Controller, ModelEntry, ModelInUseError, PreloadError, SlotConfig
from slotfsm.errors import ControllerClosedError, FailureError, UnknownSlotError
from slotfsm.testing import FakeLemonade, FakeModel, Switch
from slotfsm.testing.files import write_model

pytestmark = pytest.mark.anyio


async def settle(ctl: Controller, fake: FakeLemonade) -> None:
    """Let every request be answered and its answer reach the ledger."""
    await fake_settled(fake)
    await anyio.wait_all_tasks_blocked()


@virtual_time
async def test_1_two_timed_out_loads_are_two_arrivals_both_cleaned_up(
    fake: FakeLemonade, make_controller: ControllerFactory, models: dict[str, ModelEntry]
) -> None:
    ours = set(models)
    async with fake, make_controller(SlotConfig("chat", load_timeout=5)) as ctl:
        hang = fake.hanging("alpha")
        for _ in range(2):
            snap = await ctl.load("chat", "alpha")
            assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
            check_step(ctl, fake, ours)
        entry = ctl.ledger.get("alpha")
        assert entry is not None and entry.arrivals == 2
        hang.off()  # both arrive (the second behind the first: loads are serial)
        await settle(ctl, fake)
        await check_quiescent(ctl, fake, ours)
        assert fake.loaded_models() == [] and len(loads_of(fake, "alpha")) == 2


@virtual_time
async def test_2_a_new_load_keeps_watching_a_late_arrival_the_server_still_starts(
    fake: FakeLemonade, make_controller: ControllerFactory, models: dict[str, ModelEntry]
) -> None:
    """An /unload of it now would answer 404 (not loaded yet): the ledger keeps it anyway."""
    ours = set(models)
    async with fake, make_controller(SlotConfig("chat", load_timeout=5)) as ctl:
        hang = fake.hanging("alpha", starts=1)
        await ctl.load("chat", "alpha")
        async with anyio.create_task_group() as group:
            group.start_soon(ctl.load, "chat", "beta")  # queued behind alpha on the server
            await fake.wait_changed()
            assert ctl.snapshot("chat").cleanups == ("alpha",)
            check_step(ctl, fake, ours)
            hang.off()
        await settle(ctl, fake)
        assert ctl.snapshot("chat").model == "beta"
        await check_quiescent(ctl, fake, ours)
        assert fake.loaded_models() == ["beta"]


@pytest.mark.parametrize(
    ("program", "ends_with"),
    [
        (["load alpha", "unload", "load alpha"], "alpha"),
        (["load alpha", "load beta", "load alpha"], "alpha"),
        (["load alpha", "load alpha", "unload"], None),
    ],
    ids=["load-unload-load", "load-load-load", "join-then-unload"],
)
async def test_6_commands_to_one_slot_take_effect_in_order(
    fake: FakeLemonade,
    make_controller: ControllerFactory,
    program: list[str],
    ends_with: str | None,
) -> None:
    async with fake, make_controller(SlotConfig("chat")) as ctl:
        hang = fake.hanging("alpha", starts=1)  # the first load is still busy while all arrive
        async with anyio.create_task_group() as group:
            for command in program:
                verb, *model = command.split()
                if verb == "load":
                    group.start_soon(ctl.load, "chat", model[0])
                else:
                    group.start_soon(ctl.unload, "chat")
                await anyio.wait_all_tasks_blocked()
            hang.off()
        snap = ctl.snapshot("chat")
        assert snap.model == ends_with, snap.history
        check_step(ctl, fake, set(fake.loaded_models()) | {"alpha", "beta"})


@virtual_time
async def test_7_a_timed_out_reload_leaves_nothing_a_reset_forgets(
    fake: FakeLemonade, make_controller: ControllerFactory, models: dict[str, ModelEntry]
) -> None:
    ours = set(models)
    async with fake, make_controller(SlotConfig("chat", load_timeout=5)) as ctl:
        await ctl.load("chat", "alpha")
        ctl.reconfigure(SlotConfig("chat", load_timeout=5, ctx_size=2048))  # a real reload
        with fake.hanging("alpha"):
            snap = await ctl.load("chat", "alpha")
            assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
            await ctl.reset("chat")
            assert ctl.snapshot("chat").cleanups == ("alpha",)  # still owed after the reset
            check_step(ctl, fake, ours)
        await settle(ctl, fake)
        await check_quiescent(ctl, fake, ours)
        assert fake.loaded_models() == []


@virtual_time
async def test_11_a_timeout_during_the_old_models_unload_says_so(
    fake: FakeLemonade, make_controller: ControllerFactory, models: dict[str, ModelEntry]
) -> None:
    ours = set(models)
    async with (
        fake,
        make_controller(SlotConfig("chat", load_timeout=5), SlotConfig("other")) as ctl,
    ):
        await ctl.load("chat", "alpha")
        with fake.hanging_unload("alpha"):
            snap = await ctl.load("chat", "beta")
            assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
            assert "unloading the old model 'alpha'" in snap.error.message
            assert "/load of 'beta' not sent" in snap.error.message
            assert loads_of(fake, "beta") == []
            assert snap.leaving == ("alpha",)  # still the slot's until the unload answers
            with pytest.raises(ModelInUseError):
                await ctl.load("other", "alpha")
        await settle(ctl, fake)
        assert ctl.snapshot("chat").leaving == ()
        await check_quiescent(ctl, fake, ours)


# -- whole programs -------------------------------------------------------------------------

SLOTS = ("s0", "s1", "s2")
MODELS = ("m0", "m1", "m2", "m3")

step = st.one_of(
    st.tuples(st.just("load"), st.sampled_from(SLOTS), st.sampled_from(MODELS)),
    st.tuples(
        st.sampled_from(["unload", "reset", "cancel", "remove_slot", "add_slot"]),
        st.sampled_from(SLOTS),
    ),
    st.tuples(
        st.sampled_from(["hang", "kill", "fail", "drop", "fail_unload", "hang_unload"]),
        st.sampled_from(MODELS),
    ),
    st.tuples(st.sampled_from(["evict_all", "restart_server", "poll", "restart_controller"])),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 1.0, 4.0, 30.0, 90.0])),
)


class Program:
    """Runs one program's steps against a fake and a controller restarted on one state file."""

    def __init__(self, directory: Path) -> None:
        self.entries = [write_model(directory, name) for name in MODELS]
        self.fake = FakeLemonade(
            [FakeModel.for_file(e.name, e.path) for e in self.entries], max_models={"llm": 2}
        )
        self.state = directory / "slots.json"
        self.switches: dict[tuple[str, str], Switch[Any]] = {}
        self.commands = 0
        self.idle = anyio.Event()

    def controller(self) -> Controller:
        return Controller(
            lemonade_url="http://lemonade",
            transport=self.fake.transport(),
            registry=self.entries,
            slots=[SlotConfig(s, load_timeout=5.0, idle_timeout=60.0) for s in SLOTS],
            poll_interval=30.0,
            state_path=self.state,
        )

    def toggle(self, kind: str, model: str) -> None:
        key = (kind, model)
        if key in self.switches:
            self.switches.pop(key).off()
            return
        fake = self.fake
        switch: Switch[Any] = {
            "hang": lambda: fake.hanging(model),
            "fail": lambda: fake.failing(model, "llama-server failed to start"),
            "drop": lambda: fake.dropping_replies(model),
            "fail_unload": lambda: fake.failing_unload(model, "backend would not stop"),
            "hang_unload": lambda: fake.hanging_unload(model),
        }[kind]()
        self.switches[key] = switch

    async def run(self, steps: list[tuple[Any, ...]]) -> None:
        ours = set(MODELS)
        pending = list(steps)
        async with self.fake:
            while True:
                async with self.controller() as ctl, anyio.create_task_group() as commands:
                    while pending and pending[0][0] != "restart_controller":
                        action, *args = pending.pop(0)
                        await self.do(ctl, commands, action, args)
                        check_step(ctl, self.fake, ours)
                    if pending:  # a restart: what is in flight is cut off, the file remains
                        pending.pop(0)
                        commands.cancel_scope.cancel()
                        continue
                    # the end: every fault off, everything answered, then the oracle
                    for switch in self.switches.values():
                        switch.off()
                    self.switches.clear()
                    with anyio.fail_after(3600):
                        while self.commands:
                            await self.idle.wait()
                        await settle(ctl, self.fake)
                        await check_quiescent(ctl, self.fake, ours)
                    return

    async def do(
        self, ctl: Controller, commands: anyio.abc.TaskGroup, action: str, args: list[Any]
    ) -> None:
        if action == "add_slot":
            if args[0] not in ctl.slot_names:
                ctl.add_slot(SlotConfig(args[0], load_timeout=5.0, idle_timeout=60.0))
        elif action in ("load", "unload", "reset", "cancel", "remove_slot"):
            command = getattr(ctl, action)

            async def send() -> None:
                try:
                    await command(*args)
                except (ModelInUseError, ControllerClosedError, UnknownSlotError, FailureError):
                    pass  # in use elsewhere, closing, removed, or its unload failed
                finally:
                    self.commands -= 1
                    if not self.commands:
                        self.idle.set()
                        self.idle = anyio.Event()

            self.commands += 1
            commands.start_soon(send)
            await anyio.lowlevel.checkpoint()
        elif action in ("hang", "fail", "drop", "fail_unload", "hang_unload"):
            self.toggle(action, args[0])
        elif action == "kill":
            switch = self.switches.get(("hang", args[0]))
            if switch is not None:
                switch.kill()  # type: ignore[attr-defined]
        elif action == "evict_all":
            self.fake.evict_all()
        elif action == "restart_server":
            self.fake.restart()
        elif action == "poll":
            await ctl.refresh()
        else:
            await anyio.sleep(args[0])


@settings(max_examples=examples(25))
@given(program=st.lists(step, min_size=1, max_size=40))
def test_whole_programs_keep_ownership_airtight(tmp_path_factory: Any, program: Any) -> None:
    directory = tmp_path_factory.mktemp("program")
    trio.run(Program(directory).run, program, clock=virtual_clock())
