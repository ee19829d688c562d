"""The state file records the ledger; starting and stopping never lose or raise (ADR-0007 §4)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import anyio
import pytest
from kit import ControllerFactory

from slotfsm import ConfigError, ControllerClosedError, SlotConfig, SlotState
from slotfsm.statefile import read_state
from slotfsm.testing import FakeLemonade

pytestmark = pytest.mark.anyio


async def test_the_ledger_survives_a_restart(
    fake: FakeLemonade, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    state = tmp_path / "slots.json"
    async with make_controller(SlotConfig("chat"), SlotConfig("code"), state_path=state) as ctl:
        await ctl.load("chat", "alpha")
    document = json.loads(state.read_text())
    assert document == {"version": 2, "models": {"alpha": {"owner": "chat", "phase": "held"}}}
    async with make_controller(SlotConfig("chat"), SlotConfig("code"), state_path=state) as ctl:
        assert ctl.snapshot("chat").model == "alpha"
        assert ctl.ledger.owner_of("alpha") == "chat"


async def test_a_recorded_arrival_is_cleaned_up_after_a_restart(
    fake: FakeLemonade, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    """A load that was in flight when the last controller stopped is owed, not forgotten."""
    state = tmp_path / "slots.json"
    state.write_text(
        json.dumps(
            {"version": 2, "models": {"beta": {"origin": "chat", "arrivals": 1, "stray": True}}}
        )
    )
    await _load_behind_the_controllers_back(fake, "beta")
    async with make_controller(SlotConfig("chat"), state_path=state) as ctl:
        assert ctl.snapshot("chat").cleanups == ("beta",)
        await ctl.load("chat", "alpha")  # an answered load settles what was in flight before
        await ctl.refresh()
        await ctl.refresh()
        assert fake.loaded_models() == ["alpha"]
        assert ctl.ledger.owed() == ()


async def _load_behind_the_controllers_back(fake: FakeLemonade, name: str) -> None:
    import httpx

    async with httpx.AsyncClient(transport=fake.transport(), base_url="http://x") as client:
        (await client.post("/api/v1/load", json={"model_name": name})).raise_for_status()


async def test_one_model_recorded_for_two_slots_resumes_one_owner(
    fake: FakeLemonade, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    state = tmp_path / "slots.json"
    state.write_text(json.dumps({"version": 1, "slots": {"chat": "alpha", "code": "alpha"}}))
    await _load_behind_the_controllers_back(fake, "alpha")
    async with make_controller(SlotConfig("chat"), SlotConfig("code"), state_path=state) as ctl:
        holders = [n for n, s in ctl.snapshots().items() if s.model == "alpha"]
        assert holders == ["chat"]


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe not utf-8", b"[" * 100_000 + b"]" * 100_000, b'{"version": 2, "models": 7}'],
    ids=["not-utf-8", "absurd-nesting", "wrong-shape"],
)
async def test_a_corrupt_state_file_is_reported_and_ignored(
    make_controller: ControllerFactory,
    tmp_path: Path,
    content: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "slots.json"
    state.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="slotfsm"):
        async with make_controller(SlotConfig("chat"), state_path=state) as ctl:
            assert (await ctl.load("chat", "alpha")).state is SlotState.LOADED
    assert "state file" in caplog.text
    assert read_state(state)["alpha"].owner == "chat"  # rewritten whole


async def test_a_fifo_at_the_state_path_is_refused_at_once(
    make_controller: ControllerFactory, tmp_path: Path
) -> None:
    fifo = tmp_path / "slots.json"
    os.mkfifo(fifo)
    with anyio.fail_after(5), pytest.raises(ConfigError, match="not a regular file"):
        async with make_controller(SlotConfig("chat"), state_path=fifo):
            pass


async def test_two_controllers_never_share_a_state_file(
    make_controller: ControllerFactory, tmp_path: Path
) -> None:
    state = tmp_path / "slots.json"
    async with make_controller(SlotConfig("chat"), state_path=state) as first:
        await first.load("chat", "alpha")
        with pytest.raises(ConfigError, match="in use by another running controller"):
            async with make_controller(SlotConfig("chat"), state_path=state):
                pass
        assert first.snapshot("chat").model == "alpha"
    assert read_state(state)["alpha"].owner == "chat"  # the first one's records stand
    async with make_controller(SlotConfig("chat"), state_path=state):  # free again
        pass


async def test_leaving_never_raises_even_with_polls_and_loads_in_flight(
    make_controller: ControllerFactory,
) -> None:
    """Sixty exits with the watcher polling as fast as it can and loads under way."""
    for round_ in range(60):
        ctl = make_controller(SlotConfig("chat"), SlotConfig("code"), poll_interval=0.001)
        async with ctl, anyio.create_task_group() as group:
            group.start_soon(ctl.load, "chat", "alpha")
            group.start_soon(ctl.refresh)
            if round_ % 2:
                group.cancel_scope.cancel()
        with pytest.raises(ControllerClosedError):
            await ctl.refresh()


async def test_refresh_racing_the_close_raises_controller_closed(
    make_controller: ControllerFactory,
) -> None:
    outcomes: list[BaseException | None] = []

    async def refresh_until_closed(ctl: object) -> None:
        from slotfsm import Controller

        assert isinstance(ctl, Controller)
        try:
            while True:
                await ctl.refresh()
        except ControllerClosedError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as group, make_controller(SlotConfig("chat")) as ctl:
        group.start_soon(refresh_until_closed, ctl)
        await ctl.load("chat", "alpha")
    assert len(outcomes) == 1 and isinstance(outcomes[0], ControllerClosedError)
