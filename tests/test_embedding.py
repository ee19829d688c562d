"""What an embedding application calls: run-time changes, cancel, JSON views, replay."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from checks import loads_of
from kit import ControllerFactory, virtual_time

from slotfsm import (
    ConfigError,
    ModelEntry,
    PreloadError,
    Registry,
    SlotConfig,
    SlotState,
    UnknownModelError,
    UnknownSlotError,
)
from slotfsm.errors import FailureError
from slotfsm.preload import FingerprintCache, validate_sync
from slotfsm.snapshot import Gap, SlotTransition
from slotfsm.testing import FakeLemonade
from slotfsm.testing.files import write_model

pytestmark = pytest.mark.anyio


async def test_a_controller_may_start_with_no_slots_and_gain_and_lose_them(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller() as ctl, ctl.transitions() as stream:
        assert ctl.slot_names == ()
        snap = ctl.add_slot(SlotConfig("chat"))
        assert (snap.slot, snap.state) == ("chat", SlotState.IDLE)
        with pytest.raises(ConfigError, match="duplicate"):
            ctl.add_slot(SlotConfig("chat"))
        assert (await ctl.load("chat", "alpha")).state is SlotState.LOADED
        last = await ctl.remove_slot("chat")
        assert last.model is None  # unloaded before it went
        assert fake.loaded_models() == []
        assert len(loads_of(fake, "alpha")) == 1 and len(fake.unloads()) == 1
        with pytest.raises(UnknownSlotError):
            ctl.snapshot("chat")
        assert ctl.ledger.owed() == () and len(ctl.ledger) == 0
        seen = []
        while len(seen) < 2 or seen[-1] != "slot_removed":
            seen.append((await stream.__anext__()).trigger)
        assert seen[0] == "slot_added" and "load_succeeded" in seen


async def test_remove_slot_keeps_a_slot_whose_unload_fails(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        with (
            fake.failing_unload("alpha", "backend would not stop"),
            pytest.raises(FailureError) as caught,
        ):
            await ctl.remove_slot("chat")
        assert caught.value.failure.kind is PreloadError.UNLOAD_FAILED
        snap = ctl.snapshot("chat")  # still there, still owning its model: nothing leaks
        assert (snap.state, snap.model) == (SlotState.LOADED, "alpha")
        assert ctl.ledger.owner_of("alpha") == "chat"
        await ctl.remove_slot("chat")
        assert fake.loaded_models() == []


async def test_reconfigure_applies_to_the_next_load(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat", ctx_size=1024)) as ctl:
        await ctl.load("chat", "alpha")
        ctl.reconfigure(SlotConfig("chat", ctx_size=2048))
        await ctl.unload("chat")
        await ctl.load("chat", "alpha")
        assert [r.body.get("ctx_size") for r in fake.loads()] == [1024, 2048]
        with pytest.raises(UnknownSlotError):
            ctl.reconfigure(SlotConfig("nope"))
        assert ctl.snapshot("chat").history[-1].trigger in ("load_succeeded", "validated")


async def test_replace_registry_keeps_what_is_loaded(
    fake: FakeLemonade, make_controller: ControllerFactory, models: dict[str, ModelEntry]
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl, ctl.transitions() as stream:
        await ctl.load("chat", "alpha")
        ctl.replace_registry(Registry([models["beta"]]))
        assert ctl.snapshot("chat").model == "alpha"
        with pytest.raises(UnknownModelError):
            await ctl.load("chat", "gamma")
        assert (await ctl.load("chat", "beta")).model == "beta"
        triggers = []
        async for record in stream:
            triggers.append(record.trigger)
            if record.trigger == "registry_replaced":
                assert record.slot == "" and "1 models" in record.reason
                break


async def test_prevalidate_and_a_cache_file_shared_with_the_command_line(
    fake: FakeLemonade,
    make_controller: ControllerFactory,
    models: dict[str, ModelEntry],
    tmp_path: Path,
) -> None:
    cache_file = tmp_path / "cache" / "fingerprints.json"
    earlier = FingerprintCache(min_age=0, path=cache_file)  # as `slotfsm validate` leaves it
    assert validate_sync(models["alpha"], cache=earlier) is None
    assert earlier.save()
    seen: list[str] = []
    async with make_controller(SlotConfig("chat"), cache_path=cache_file) as ctl:
        results = await ctl.prevalidate(progress=lambda name, failure: seen.append(name))
        assert results["alpha"] is None and results["corrupt"] is not None
        assert results["corrupt"].kind is PreloadError.SHA256_MISMATCH
        assert sorted(seen) == sorted(results)
        assert fake.loads() == [] and fake.unloads() == []  # nothing sent but the polls
        assert (await ctl.load("chat", "alpha")).state is SlotState.LOADED
    assert len(FingerprintCache.load(cache_file)) == 1  # kept, not clobbered


async def test_a_damaged_cache_file_costs_a_hash_never_an_error(
    make_controller: ControllerFactory, tmp_path: Path
) -> None:
    cache_file = tmp_path / "fingerprints.json"
    cache_file.write_bytes(b"\xff{not json")
    async with make_controller(SlotConfig("chat"), cache_path=cache_file) as ctl:
        assert (await ctl.load("chat", "alpha")).state is SlotState.LOADED


async def test_json_views_round_trip(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        bad = await ctl.load("chat", "corrupt")
        good = await ctl.load("chat", "alpha")
        for snap in (bad, good):
            view = json.loads(json.dumps(snap.to_dict(history=True)))
            assert view["slot"] == "chat" and view["state"] == snap.state.value
            assert view["since"].endswith("+00:00")
            for record, shown in zip(snap.history, view["history"], strict=True):
                assert shown["id"] == record.id and shown["trigger"] == record.trigger
        failure = bad.to_dict()["error"]
        assert failure["kind"] == "sha256_mismatch" == PreloadError.SHA256_MISMATCH.code
        ids = [t.id for t in good.history]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        with pytest.raises(FailureError):
            bad.raise_for_failure()
        assert good.raise_for_failure() is good
        assert ctl.last_health is not None
        reading = json.loads(json.dumps(ctl.last_health.to_dict()))
        assert [row["model_name"] for row in reading["rows"]] == ["alpha"]


async def test_a_reader_resumes_after_the_last_id_it_saw(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat"), transition_ring=4) as ctl:
        await ctl.load("chat", "alpha")
        first = ctl.snapshot("chat").history
        async with ctl.transitions(since=first[0].id) as stream:
            replayed = [await stream.__anext__() for _ in range(len(first) - 1)]
        assert [r.id for r in replayed if isinstance(r, SlotTransition)] == [
            t.id for t in first[1:]
        ]
        await ctl.unload("chat")
        await ctl.load("chat", "beta")  # more records than the ring keeps
        async with ctl.transitions(since=first[0].id) as stream:
            gap = await stream.__anext__()
            assert isinstance(gap, Gap) and gap.after == first[0].id and gap.missed > 0
            after = await stream.__anext__()
            assert isinstance(after, SlotTransition)
            assert after.id == gap.after + gap.missed + 1


async def test_in_use_is_a_record_in_the_stream(make_controller: ControllerFactory) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        async with ctl.transitions() as stream:
            async with ctl.in_use("chat"):
                entered = await stream.__anext__()
            left = await stream.__anext__()
        assert (entered.trigger, entered.reason) == ("use", "serving: in use")
        assert (left.trigger, left.reason) == ("use", "no longer in use")


async def test_one_log_line_per_transition_with_context_and_no_key(
    fake: FakeLemonade, models: dict[str, ModelEntry], caplog: pytest.LogCaptureFixture
) -> None:
    from slotfsm import Controller

    key = "sk-very-secret-key"
    with caplog.at_level(logging.DEBUG):
        async with Controller(
            lemonade_url="http://lemonade",
            registry=list(models.values()),
            slots=[SlotConfig("chat")],
            transport=fake.transport(),
            api_key=key,
        ) as ctl:
            snap = await ctl.load("chat", "alpha")
    assert key not in caplog.text
    ours = [r for r in caplog.records if r.name == "slotfsm" and hasattr(r, "trigger")]
    assert [r.trigger for r in ours] == [t.trigger for t in snap.history]  # type: ignore[attr-defined]
    assert all(r.slot == "chat" for r in ours)  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.name.startswith("transitions")]


async def test_an_unverified_entry_loads_only_when_allowed(
    fake: FakeLemonade, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    sound = write_model(tmp_path, "drop-in")
    unverified = ModelEntry(name="drop-in", path=sound.path)
    fake.add_model("drop-in")
    async with make_controller(SlotConfig("chat")) as ctl:
        ctl.replace_registry(Registry([unverified]))
        snap = await ctl.load("chat", "drop-in")
        assert snap.state is SlotState.ERROR and loads_of(fake, "drop-in") == []
    async with make_controller(SlotConfig("chat"), allow_unverified=True) as ctl:
        ctl.replace_registry(Registry([unverified]))
        snap = await ctl.load("chat", "drop-in")
        assert (snap.state, snap.unverified) == (SlotState.LOADED, True)
        assert snap.to_dict()["unverified"] is True


async def test_cancel_stops_a_validation_and_keeps_the_held_model(
    make_controller: ControllerFactory, tmp_path: Path
) -> None:
    big = write_model(tmp_path, "big", size=64 * 1024 * 1024)
    async with make_controller(SlotConfig("chat")) as ctl:
        ctl.replace_registry(Registry([*ctl.registry, big]))
        await ctl.load("chat", "alpha")
        async with anyio.create_task_group() as group:
            group.start_soon(ctl.load, "chat", "big")
            async with ctl.transitions() as stream:
                async for record in stream:
                    if record.dest is SlotState.VALIDATING:
                        break
            snap = await ctl.cancel("chat")
        assert (snap.state, snap.model) == (SlotState.LOADED, "alpha")
        assert snap.error is not None and snap.error.kind is PreloadError.CANCELLED
        assert (await ctl.cancel("chat")) == ctl.snapshot("chat")  # settled: nothing to stop


async def test_the_v1_prefix_works_as_well(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    from slotfsm import ConfigError, Controller

    async with Controller(
        lemonade_url="http://lemonade",
        registry=list(models.values()),
        slots=[SlotConfig("chat")],
        transport=fake.transport(),
        api_prefix="/v1",
    ) as ctl:
        assert (await ctl.load("chat", "alpha")).state is SlotState.LOADED
    assert {r.path.rsplit("/", 1)[0] for r in fake.requests if r.route != "model"} == {"/v1"}
    with pytest.raises(ConfigError):
        Controller(lemonade_url="http://x", registry=[], api_prefix="/v2")


async def test_an_eviction_says_what_caused_it(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("a"), SlotConfig("b")) as ctl:
        await ctl.load("a", "alpha")
        with fake.failing("gamma", "llama-server failed to start"):
            await ctl.load("b", "gamma")  # its failed start evicts everything
        a = ctl.snapshot("a")
        assert a.error is not None and a.error.kind is PreloadError.EVICTED
        assert a.error.found is not None and "evict-all" in a.error.found
        assert "'gamma'" in a.error.found
        await ctl.load("a", "alpha")
        fake.evict_all()  # someone else's doing: seen at a poll
        await ctl.refresh()
        a = ctl.snapshot("a")
        assert a.error is not None and a.error.found is not None
        assert "gone at a poll" in a.error.found


@virtual_time
async def test_an_optional_policy_unloads_idle_models_nobody_here_loaded(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    import httpx

    async with httpx.AsyncClient(transport=fake.transport(), base_url="http://x") as other:
        for name in ("alpha", "gamma"):  # another client's models
            (await other.post("/api/v1/load", json={"model_name": name})).raise_for_status()
    slot = SlotConfig("chat", idle_timeout=None)
    async with make_controller(slot, unmanaged_idle_timeout=60, poll_interval=30) as ctl:
        await ctl.load("chat", "beta")
        for _ in range(5):  # gamma is used all along; alpha is not
            fake.mark_used("gamma")
            await anyio.sleep(30)
        assert sorted(fake.loaded_models()) == ["beta", "gamma"]
        assert ctl.snapshot("chat").model == "beta"  # a slot's model is never this policy's
        assert ctl.ledger.owed() == ()
    async with make_controller(SlotConfig("chat")) as ctl:  # off by default
        await anyio.lowlevel.checkpoint()
    assert sorted(fake.loaded_models()) == ["beta", "gamma"]
