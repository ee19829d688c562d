"""The fake Lemonade's switches, knobs and bookkeeping (in process).

What the real server does is checked by replaying its recorded answers
(``tests/test_contract.py``); this file covers what the recordings cannot:
the test switches, the timing knobs, the request log, background work.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from slotfsm.lemonade import DEFAULT_MAX_HEALTH_BYTES
from slotfsm.testing import (
    HEALTH_TYPES,
    FakeLemonade,
    FakeModel,
    FakeTiming,
    HealthFault,
    RecordedRequest,
)

pytestmark = pytest.mark.anyio

OFFSET = FakeLemonade.LAST_USE_OFFSET_MS


def make_fake(**kwargs: Any) -> FakeLemonade:
    models = [
        FakeModel("qwen", checkpoint="unsloth/Qwen3-0.6B-GGUF:Q4_0"),
        FakeModel("llama", checkpoint="/models/llama.gguf"),
        FakeModel("phi"),
        FakeModel("nomic", type="embedding"),
    ]
    return FakeLemonade(models, **kwargs)


@asynccontextmanager
async def connect(fake: FakeLemonade) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=fake.transport(), base_url="http://lemonade") as client:
        yield client


async def load(client: httpx.AsyncClient, name: str, **options: Any) -> httpx.Response:
    return await client.post("/api/v1/load", json={"model_name": name, **options})


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/v1/health")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def row(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    rows = [r for r in (await health(client))["all_models_loaded"] if r["model_name"] == name]
    assert len(rows) == 1, rows
    found: dict[str, Any] = rows[0]
    return found


# ---------------------------------------------------------------- configuration


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        FakeLemonade(["a"], max_models={"llm": 0})
    with pytest.raises(ValueError):
        FakeLemonade(["a"], max_models={"vision": 1})
    with pytest.raises(ValueError):
        FakeLemonade(["a", "a"])
    with pytest.raises(ValueError):
        FakeModel("a", type="chat")
    with pytest.raises(ValueError):
        FakeTiming(unload=-1)


def test_a_model_is_local_when_its_checkpoint_is_a_path() -> None:
    local = FakeModel("m", checkpoint="/models/m.gguf")
    hub = FakeModel("h")
    assert (local.source, local.model_file, local.spellings) == (
        "extra_models_dir",
        "/models/m.gguf",
        ("m", "extra.m"),
    )
    assert (hub.source, hub.checkpoint, hub.spellings) == ("huggingface", "fake-org/h:Q4_0", ("h",))
    assert hub.model_file.startswith(FakeModel.HF_CACHE)
    assert FakeModel("u", checkpoint="/u.gguf", source="user").spellings == ("u", "user.u")


# ---------------------------------------------------------------- per-type LRU


async def test_a_full_type_evicts_its_own_lru_only() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        for name in ("qwen", "nomic", "llama"):
            assert (await load(client, name)).status_code == 200
        body = await health(client)
    assert fake.loaded_models() == ["nomic", "llama"]
    assert body["max_models"] == dict.fromkeys(HEALTH_TYPES, 1)


async def test_lru_picks_the_least_recently_used_not_the_oldest() -> None:
    fake = make_fake(max_models={"llm": 2})
    async with connect(fake) as client:
        await load(client, "qwen")
        await load(client, "llama")
        fake.mark_used("qwen")
        await load(client, "phi")
        assert fake.loaded_models() == ["qwen", "phi"]
        await load(client, "phi")  # same options: a use, not a reload
        await load(client, "llama")
        assert fake.loaded_models() == ["phi", "llama"]
        assert (await health(client))["max_models"]["llm"] == 2


async def test_unlimited_type_never_evicts() -> None:
    fake = make_fake(max_models={"llm": -1, "mesh": 2})
    async with connect(fake) as client:
        for name in ("qwen", "llama", "phi"):
            await load(client, name)
        limits = (await health(client))["max_models"]
    assert fake.loaded_models() == ["qwen", "llama", "phi"]
    assert (limits["llm"], limits["mesh"]) == (-1, 2)  # a newer type is listed once configured


def test_mark_used_of_a_model_not_loaded_raises() -> None:
    with pytest.raises(KeyError):
        make_fake().mark_used("qwen")


# ---------------------------------------------------------------- switches


async def test_a_switch_is_on_until_its_block_ends_and_switches_stack() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        with fake.failing("qwen", "first") as first:
            assert first.on
            second = fake.failing("qwen", "second")
            message = (await load(client, "qwen")).json()["error"]["message"]
            assert message == "Failed to load model 'qwen': second"  # the latest decides
            second.off()
            second.off()  # again: nothing happens
            message = (await load(client, "qwen")).json()["error"]["message"]
            assert message == "Failed to load model 'qwen': first"
        assert not first.on
        assert (await load(client, "qwen")).status_code == 200
    assert fake.evict_all_count == 2
    assert repr(first) == "<Switch fail 'qwen' off>"


@pytest.mark.parametrize(
    "message", ["model file not found", "/models/q.gguf does not exist", "No such file"]
)
async def test_a_file_not_found_failure_touches_nothing_else(message: str) -> None:
    fake = make_fake(max_models={"llm": 2})
    async with connect(fake) as client:
        await load(client, "llama")
        await load(client, "nomic")
        with fake.failing("qwen", message):
            response = await load(client, "qwen")
        assert response.status_code == 500
        assert response.json()["error"]["message"] == f"Failed to load model 'qwen': {message}"
        assert fake.loaded_models() == ["llama", "nomic"]
        assert fake.evict_all_count == 0
        assert (await load(client, "qwen")).status_code == 200


async def test_evict_all_switch_unloads_everything_and_counts() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        await load(client, "nomic")
        fake.evict_all()
        assert (await health(client))["all_models_loaded"] == []
    assert fake.evict_all_count == 1


async def test_a_hung_load_blocks_every_later_load_until_released() -> None:
    fake = make_fake()
    answered: list[tuple[str, int]] = []

    async with connect(fake) as client:
        await load(client, "phi")

        async def load_and_note(name: str) -> None:
            answered.append((name, (await load(client, name)).status_code))

        async with anyio.create_task_group() as tg:
            with fake.hanging("qwen"):
                tg.start_soon(load_and_note, "qwen")
                await fake.wait_hanging("qwen")
                tg.start_soon(load_and_note, "nomic")
                await anyio.wait_all_tasks_blocked()
                assert answered == []
                assert fake.loads_in_flight == 2
                # Neither /health nor /unload waits for the load lock; the hung
                # model is not listed and cannot be unloaded while it starts.
                assert (await health(client))["all_models_loaded"] == []  # phi: LRU
                for name in ("phi", "qwen"):
                    unloaded = await client.post("/api/v1/unload", json={"model_name": name})
                    assert (unloaded.status_code, unloaded.json()) == (
                        404,
                        {"error": f"Model not loaded: {name}"},
                    )
                assert answered == []
    assert answered == [("qwen", 200), ("nomic", 200)]
    assert fake.loaded_models() == ["qwen", "nomic"]
    assert fake.max_concurrent_loads == 2
    assert fake.max_concurrent_loads_of("qwen") == 1
    assert fake.loads_in_flight == 0


async def test_concurrent_loads_of_one_model_are_counted() -> None:
    fake = make_fake()
    async with connect(fake) as client, anyio.create_task_group() as tg:
        with fake.hanging("qwen"):
            tg.start_soon(load, client, "qwen")
            tg.start_soon(load, client, "qwen")
            await fake.wait_hanging("qwen")
            await anyio.wait_all_tasks_blocked()
    assert fake.max_concurrent_loads_of("qwen") == 2
    assert fake.max_concurrent_loads_of("nomic") == 0


async def test_a_killed_start_fails_like_a_crash_and_a_one_shot_hang_lets_the_retry_through() -> (
    None
):
    fake = make_fake(max_models={"llm": 2})
    statuses: list[int] = []
    async with connect(fake) as client:
        await load(client, "nomic")

        async def load_qwen() -> None:
            statuses.append((await load(client, "qwen")).status_code)

        hang = fake.hanging("qwen", starts=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load_qwen)
            await fake.wait_hanging("qwen")
            assert hang.hung == 1
            hang.kill()
    assert statuses == [200]  # the retry after the evict-all was not caught
    assert fake.loaded_models() == ["qwen"]
    assert fake.evict_all_count == 1
    assert hang.on and hang.hung == 0


@pytest.mark.virtual_time
async def test_a_start_that_never_becomes_ready_times_out_twice_with_real_timing() -> None:
    fake = make_fake(max_models={"llm": 2}, timing=FakeTiming.REAL)
    async with connect(fake) as client:
        await load(client, "nomic")
        fake.hanging("qwen")
        started = anyio.current_time()
        response = await load(client, "qwen")
        took = anyio.current_time() - started
    assert response.status_code == 500
    assert response.json()["error"]["message"] == (
        "Failed to load model 'qwen': llama-server failed to start"
    )
    assert took == pytest.approx(2 * (608 + 2.1) + 2.1)  # two timeouts, one eviction
    assert fake.loaded_models() == []


async def test_a_deleted_file_answers_the_offline_download_error_once_then_404() -> None:
    fake = make_fake(max_models={"llm": 2})
    async with connect(fake) as client:
        await load(client, "phi")
        fake.delete_file("llama")
        first = await load(client, "llama")
        gone = await client.get("/api/v1/models/llama")
        second = await load(client, "llama")
    assert (first.status_code, first.json()["error"]["message"]) == (
        500,
        "Failed to load model 'llama': CURL error: Couldn't resolve host name",
    )
    assert (gone.status_code, second.status_code) == (404, 404)
    assert fake.loaded_models() == ["phi"] and fake.evict_all_count == 0


async def test_busy_shows_in_the_row() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        with fake.busy("qwen"):
            busy = await row(client, "qwen")
        idle = await row(client, "qwen")
    assert (busy["is_busy"], busy["is_streaming"], busy["status"]) == (True, True, "in_use")
    assert (idle["is_busy"], idle["is_streaming"], idle["status"]) == (False, False, "ready")


# ---------------------------------------------------------------- timing knobs


@pytest.mark.virtual_time
async def test_real_timing_makes_unloads_slow_and_health_wait_for_them() -> None:
    fake = make_fake(max_models={"llm": -1}, timing=FakeTiming.REAL)
    async with connect(fake) as client:
        for name in ("qwen", "llama", "phi"):
            await load(client, name)
        seen: dict[str, float] = {}

        async def timed(what: str, call: Any) -> None:
            began = anyio.current_time()
            await call()
            seen[what] = anyio.current_time() - began

        async with anyio.create_task_group() as tg:
            tg.start_soon(timed, "unload all", lambda: client.post("/api/v1/unload"))
            await anyio.sleep(0.5)
            tg.start_soon(timed, "health", lambda: client.get("/api/v1/health"))
            tg.start_soon(timed, "live", lambda: client.get("/live"))
    assert seen["unload all"] == pytest.approx(3 * 2.1)
    assert seen["health"] == pytest.approx(3 * 2.1 - 0.5)
    assert seen["live"] == 0


@pytest.mark.virtual_time
async def test_instant_timing_takes_no_time_and_the_knob_can_change() -> None:
    fake = make_fake(max_models={"llm": -1})
    async with connect(fake) as client:
        started = anyio.current_time()
        await load(client, "qwen")
        await client.post("/api/v1/unload", json={"model_name": "qwen"})
        assert anyio.current_time() == started
        fake.timing = FakeTiming(unload=5.0, health_waits=False)
        await load(client, "qwen")
        await client.post("/api/v1/unload", json={"model_name": "qwen"})
        assert anyio.current_time() - started == 5.0


# ---------------------------------------------------------------- background work


@pytest.mark.parametrize("timing", [FakeTiming.INSTANT, FakeTiming.REAL], ids=["instant", "real"])
@pytest.mark.virtual_time
async def test_an_abandoned_load_completes_when_the_fake_owns_its_work(timing: FakeTiming) -> None:
    """ADR-0007 §3: the server finishes a load whose client gave up (a late arrival)."""
    async with make_fake(timing=timing) as fake, connect(fake) as client:
        hang = fake.hanging("qwen")
        with anyio.move_on_after(120):
            await load(client, "qwen")  # the client gives up on the hung load
        assert fake.loaded_models() == []
        hang.off()
        while "qwen" not in fake.loaded_models():
            await fake.wait_changed()
        assert (await row(client, "qwen"))["model_name"] == "qwen"
    (record,) = fake.loads()
    assert record.status == 200  # the fake answered; nobody was listening


async def test_an_abandoned_load_completes_on_both_backends() -> None:
    async with make_fake() as fake, connect(fake) as client:
        with fake.hanging("qwen"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(load, client, "qwen")
                await fake.wait_hanging("qwen")
                tg.cancel_scope.cancel()
            assert fake.loads_in_flight == 1  # still loading for nobody
        while fake.loads_in_flight:
            await fake.wait_changed()
        assert fake.loaded_models() == ["qwen"]


async def test_outside_its_context_an_abandoned_load_in_process_is_cancelled() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        with fake.hanging("qwen"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(load, client, "qwen")
                await fake.wait_hanging("qwen")
                tg.cancel_scope.cancel()
        assert fake.loads_in_flight == 0
        (record,) = fake.loads()
        assert record.status is None and record.done_at is not None
        assert (await load(client, "nomic")).status_code == 200
    assert fake.loaded_models() == ["nomic"]


async def test_leaving_the_context_cancels_what_still_runs() -> None:
    fake = make_fake()
    with anyio.fail_after(5):
        async with fake, connect(fake) as client:
            fake.hanging("qwen")
            async with anyio.create_task_group() as tg:
                tg.start_soon(load, client, "qwen")
                await fake.wait_hanging("qwen")
                tg.cancel_scope.cancel()
    assert fake.loaded_models() == []
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="already entered")):
        async with fake, fake:
            pass


async def test_a_dropped_reply_in_the_background_still_drops() -> None:
    async with make_fake() as fake, connect(fake) as client:
        with fake.dropping_replies("qwen"), pytest.raises(httpx.RemoteProtocolError):
            await load(client, "qwen")
    assert fake.loaded_models() == ["qwen"]


# ---------------------------------------------------------------- last_use and the clock


@pytest.mark.virtual_time
async def test_last_use_is_milliseconds_on_the_virtual_monotonic_clock() -> None:
    booted = anyio.current_time()
    fake = make_fake()
    fake.delaying("qwen", 2.0)
    async with connect(fake) as client:
        await anyio.sleep(10)
        await load(client, "qwen")
        assert (await row(client, "qwen"))["last_use"] == OFFSET + 12_000
        await anyio.sleep(300)
        assert (await row(client, "qwen"))["last_use"] == OFFSET + 12_000
        fake.mark_used("qwen")
        assert (await row(client, "qwen"))["last_use"] == OFFSET + 312_000
        fake.mark_used("qwen")  # the same instant: still later than the last use
        assert (await row(client, "qwen"))["last_use"] == OFFSET + 312_001
    (record,) = fake.loads()
    assert record.at - booted == 10
    assert record.done_at is not None and record.done_at - booted == 12


@pytest.mark.virtual_time
async def test_same_options_reload_moves_last_use_in_virtual_time() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen", ctx_size=4096)
        before = await row(client, "qwen")
        await anyio.sleep(30)
        await load(client, "qwen")  # 4096 is the default: the same options
        after = await row(client, "qwen")
    assert after["last_use"] == before["last_use"] + 30_000
    assert after["pid"] == before["pid"]


@pytest.mark.virtual_time
async def test_restart_forgets_models_and_restarts_the_clock() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        await anyio.sleep(50)
        fake.restart()
        assert (await health(client))["model_loaded"] is None
        await anyio.sleep(1)
        await load(client, "nomic")
        assert (await row(client, "nomic"))["last_use"] == OFFSET + 1_000
    assert fake.loaded_models() == ["nomic"]


# ---------------------------------------------------------------- /health and the catalog


async def test_older_servers_rows_on_request() -> None:
    fake = make_fake(newer_fields=False, version="10.6.0")
    async with connect(fake) as client:
        await load(client, "qwen")
        body = await health(client)
    assert set(body) == {"status", "version", "model_loaded", "all_models_loaded", "max_models"}
    assert set(body["all_models_loaded"][0]) == {
        "model_name",
        "checkpoint",
        "type",
        "device",
        "backend_url",
        "pid",
        "recipe",
        "recipe_options",
        "last_use",
    }
    assert body["version"] == "10.6.0"


async def test_launch_command_names_the_file_and_the_options() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "llama", ctx_size=8192, llamacpp_args="--threads 2")
        loaded = await row(client, "llama")
    command = loaded["launch_command"]
    assert command[:3] == [FakeLemonade.LLAMA_SERVER, "-m", "/models/llama.gguf"]
    assert command[3:5] == ["--ctx-size", "8192"]
    assert command[-2:] == ["--threads", "2"]
    assert loaded["backend_url"] == f"http://127.0.0.1:{command[6]}/v1"


async def test_health_faults() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        with fake.health_fault(HealthFault.NOT_JSON), pytest.raises(json.JSONDecodeError):
            (await client.get("/api/v1/health")).json()
        with fake.health_fault(HealthFault.WRONG_SHAPE):
            assert not isinstance((await health(client))["all_models_loaded"], list)
        with fake.health_fault(HealthFault.SERVER_ERROR):
            assert (await client.get("/api/v1/health")).status_code == 500

        statuses: list[int] = []

        async def poll() -> None:
            statuses.append((await client.get("/api/v1/health")).status_code)

        async with anyio.create_task_group() as tg:
            with fake.health_fault(HealthFault.HANG):
                tg.start_soon(poll)
                await anyio.wait_all_tasks_blocked()
                assert statuses == []
                assert (await client.get("/live")).status_code == 200
    assert statuses == [200]


async def test_more_health_faults_huge_and_a_non_string_name_and_duplicate_rows() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        with fake.health_fault(HealthFault.HUGE):
            response = await client.get("/api/v1/health")
        assert response.status_code == 200
        assert int(response.headers["content-length"]) > DEFAULT_MAX_HEALTH_BYTES
        assert response.json()["all_models_loaded"] == []

        with fake.health_fault(HealthFault.NAME_NOT_STRING):
            rows = (await health(client))["all_models_loaded"]
        assert [r["model_name"] for r in rows] == ["qwen", 42]

        with fake.duplicate_rows():
            rows = (await health(client))["all_models_loaded"]
        assert [r["model_name"] for r in rows] == ["qwen", "qwen"]
        assert rows[0] == rows[1]
        assert [r["model_name"] for r in (await health(client))["all_models_loaded"]] == ["qwen"]


async def test_models_lists_downloaded_models_unless_show_all() -> None:
    fake = FakeLemonade(["qwen", FakeModel("big", downloaded=False, size=4.5)])
    async with connect(fake) as client:
        some = (await client.get("/api/v1/models")).json()
        every = (await client.get("/api/v1/models", params={"show_all": "true"})).json()
        one = (await client.get("/api/v1/models/big")).json()
        refused = await load(client, "big")
    assert [m["id"] for m in some["data"]] == ["qwen"]
    assert [m["id"] for m in every["data"]] == ["big", "qwen"]
    assert one == every["data"][0]
    assert (one["downloaded"], one["size"], one["checkpoint"]) == (False, 4.5, "fake-org/big:Q4_0")
    assert "max_context_window" not in one
    assert fake.requests[1].query == "show_all=true"
    assert refused.status_code == 500  # an offline server cannot download it


async def test_system_info_lists_the_backends_and_only_usable_ones_load() -> None:
    fake = make_fake(backends={"cpu": "installed", "vulkan": "installable", "cuda": "unsupported"})
    async with connect(fake) as client:
        info = (await client.get("/api/v1/system-info")).json()
        vulkan = await load(client, "qwen", llamacpp_backend="vulkan")
        cuda = await load(client, "qwen", llamacpp_backend="cuda")
    llamacpp = info["recipes"]["llamacpp"]
    assert {name: b["state"] for name, b in llamacpp["backends"].items()} == {
        "cpu": "installed",
        "cuda": "unsupported",
        "vulkan": "installable",
    }
    assert llamacpp["default_backend"] == "cpu"
    assert vulkan.status_code == 200
    assert cuda.json()["error"]["message"] == (
        "Failed to load model 'qwen': 'llamacpp.backend' must be one of: auto, cpu, vulkan"
    )
    assert fake.evict_all_count == 1


async def test_catalog_can_change_under_the_client() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        fake.remove_model("qwen")
        assert (await load(client, "qwen")).status_code == 404
        fake.add_model(FakeModel("gemma", type="reranking"))
        assert (await load(client, "gemma")).status_code == 200
        assert (await row(client, "gemma"))["type"] == "reranking"


async def test_a_chat_completion_loads_on_demand_and_moves_last_use() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        chat = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        first = await client.post("/api/v1/chat/completions", json=chat)
        used = (await row(client, "qwen"))["last_use"]
        await client.post("/api/v1/chat/completions", json=chat)
        again = (await row(client, "qwen"))["last_use"]
    assert first.status_code == 200
    assert first.json()["usage"]["completion_tokens"] == 3
    assert again > used
    assert fake.requests[0].route == "chat"


# ---------------------------------------------------------------- the request log


async def test_every_request_is_recorded() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await client.post("/v1/load", json={"model_name": "qwen", "ctx_size": 2048})
        await client.get("/api/v1/load")
        await client.post("/api/v1/unload", content=b"")
        await client.get("/api/v0/health")
        await client.get("/live")
    load_record, get_load, unload_record, health_record, live = fake.requests
    assert isinstance(load_record, RecordedRequest)
    assert (load_record.method, load_record.path, load_record.route) == ("POST", "/v1/load", "load")
    assert load_record.body == {"model_name": "qwen", "ctx_size": 2048}
    assert json.loads(load_record.raw_body) == load_record.body
    assert (load_record.status, load_record.authorized) == (200, True)
    assert load_record.done_at is not None and load_record.at <= load_record.done_at
    assert (get_load.method, get_load.status) == ("GET", 405)
    assert (unload_record.body, unload_record.raw_body) == (None, b"")
    assert [r.route for r in fake.requests] == ["load", "load", "unload", "health", "live"]
    assert fake.loads() == [load_record]
    assert fake.unloads() == [unload_record]
    assert fake.health_polls() == [health_record]
    assert live.status == 200


async def test_lifespan_startup_and_shutdown_complete() -> None:
    fake = make_fake()
    to_app_send, to_app = anyio.create_memory_object_stream[dict[str, Any]](4)
    from_app_send, from_app = anyio.create_memory_object_stream[dict[str, Any]](4)

    async def receive() -> dict[str, Any]:
        return await to_app.receive()

    async def send(message: Any) -> None:
        await from_app_send.send(dict(message))

    async with to_app_send, to_app, from_app_send, from_app, anyio.create_task_group() as tg:
        tg.start_soon(fake, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await to_app_send.send({"type": "lifespan.startup"})
        assert await from_app.receive() == {"type": "lifespan.startup.complete"}
        await to_app_send.send({"type": "lifespan.shutdown"})
        assert await from_app.receive() == {"type": "lifespan.shutdown.complete"}


# ---------------------------------------------------------------- unload switches


async def test_fail_unload_answers_500_with_a_plain_string_and_keeps_the_model() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        failing_unload = fake.failing_unload("qwen", "backend would not stop")
        response = await client.post("/api/v1/unload", json={"model_name": "qwen"})
        assert (response.status_code, response.json()) == (
            500,
            {"error": "backend would not stop"},
        )
        assert fake.loaded_models() == ["qwen"]
        missing = await client.post("/api/v1/unload", json={"model_name": "phi"})
        assert missing.status_code == 404  # not loaded: the switch does not apply
        failing_unload.off()
        response = await client.post("/api/v1/unload", json={"model_name": "qwen"})
        assert response.status_code == 200
    assert fake.loaded_models() == []


async def test_hang_unload_blocks_before_acting_until_released() -> None:
    fake = make_fake()
    statuses: list[int] = []
    async with connect(fake) as client:
        await load(client, "qwen")

        async def unload_qwen() -> None:
            response = await client.post("/api/v1/unload", json={"model_name": "qwen"})
            statuses.append(response.status_code)

        hung_unload = fake.hanging_unload("qwen")
        async with anyio.create_task_group() as tg:
            tg.start_soon(unload_qwen)
            await fake.wait_hanging_unload("qwen")
            assert fake.loaded_models() == ["qwen"]  # not unloaded yet
            assert (await load(client, "nomic")).status_code == 200  # loads are not held
            assert statuses == []
            hung_unload.off()
    assert statuses == [200]
    assert fake.loaded_models() == ["nomic"]


async def test_drop_reply_acts_then_the_client_sees_a_dropped_connection() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        dropping = fake.dropping_replies("qwen")
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await load(client, "qwen")
        assert fake.loaded_models() == ["qwen"]  # the load happened
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/api/v1/unload", json={"model": "qwen"})
        assert fake.loaded_models() == []  # so did the unload
        assert (await load(client, "nomic")).status_code == 200  # other names are answered
        health_fault = fake.health_fault(HealthFault.DROP)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/api/v1/health")
        health_fault.off()
        dropping.off()
        assert (await load(client, "qwen")).status_code == 200
    dropped = [(r.route, r.status, r.dropped) for r in fake.requests]
    assert dropped == [
        ("load", None, True),
        ("unload", None, True),
        ("load", 200, False),
        ("health", None, True),
        ("load", 200, False),
    ]
