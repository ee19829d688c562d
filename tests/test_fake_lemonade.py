"""The fake Lemonade does what the reference page says the real server does (in process)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from slotfsm.testing import PREFIXES, FakeLemonade, FakeModel, HealthFault, RecordedRequest

pytestmark = pytest.mark.anyio

OFFSET = FakeLemonade.LAST_USE_OFFSET_MS


def make_fake(**kwargs: Any) -> FakeLemonade:
    models = [
        FakeModel("qwen", checkpoint="unsloth/Qwen3-0.6B-GGUF:Q4_0"),
        FakeModel("llama"),
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


# ---------------------------------------------------------------- routes


async def test_every_api_route_answers_under_the_four_prefixes() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        for prefix in PREFIXES:
            assert (await client.get(f"{prefix}health")).json()["status"] == "ok"
            assert (await client.get(f"{prefix}models")).json()["object"] == "list"
            loaded = await client.post(f"{prefix}load", json={"model_name": "qwen"})
            assert loaded.status_code == 200
            unloaded = await client.post(f"{prefix}unload", json={"model_name": "qwen"})
            assert unloaded.status_code == 200
    assert [r.path for r in fake.requests[:4]] == [
        "/api/v1/health",
        "/api/v1/models",
        "/api/v1/load",
        "/api/v1/unload",
    ]
    assert [r.route for r in fake.requests] == ["health", "models", "load", "unload"] * 4
    assert {r.path for r in fake.loads()} == {f"{p}load" for p in PREFIXES}


async def test_live_answers_without_a_prefix_only() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        live = await client.get("/live")
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        assert (await client.get("/api/v1/live")).status_code == 404
        assert (await client.get("/health")).status_code == 404
    assert [r.route for r in fake.requests] == ["live", "other", "other"]


async def test_unknown_route_is_404_with_an_error() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        for response in (
            await client.get("/api/v1/nope"),
            await client.post("/api/v1/health"),
            await client.get("/"),
        ):
            assert response.status_code == 404
            assert "error" in response.json()


@pytest.mark.parametrize("route", ["load", "unload"])
async def test_get_on_a_post_route_is_405(route: str) -> None:
    fake = make_fake()
    async with connect(fake) as client:
        response = await client.get(f"/api/v1/{route}")
    assert response.status_code == 405
    assert response.json() == {"error": "Method Not Allowed. Use POST for this endpoint"}
    assert fake.loads() == [] and fake.unloads() == []


async def test_api_key_is_required_on_prefixed_routes_and_never_stored() -> None:
    fake = make_fake(api_key="s3cret-key")
    async with connect(fake) as client:
        missing = await client.get("/api/v1/health")
        wrong = await client.get("/v1/health", headers={"Authorization": "Bearer nope"})
        bare = await client.get("/v0/health", headers={"Authorization": "s3cret-key"})
        good = await client.get("/api/v1/health", headers={"Authorization": "Bearer s3cret-key"})
        load_without = await load(client, "qwen")
        live = await client.get("/live")
    for refused in (missing, wrong, bare, load_without):
        assert refused.status_code == 401
        assert refused.json() == {"error": "Invalid or missing API key"}
    assert good.status_code == 200
    assert live.status_code == 200
    assert fake.loaded_models() == []
    assert [r.authorized for r in fake.requests] == [False, False, False, True, False, False]
    assert [r.status for r in fake.requests] == [401, 401, 401, 200, 401, 200]
    assert "s3cret" not in repr(fake.requests)


# ---------------------------------------------------------------- /load


async def test_load_answers_the_success_shape_and_ignores_recipe_and_checkpoint() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        response = await load(client, "qwen", recipe="flm", checkpoint="other/repo:Q8_0")
        assert response.status_code == 200
        assert response.json() == {
            "status": "success",
            "model_name": "qwen",
            "checkpoint": "unsloth/Qwen3-0.6B-GGUF:Q4_0",
            "recipe": "llamacpp",
        }
        loaded = await row(client, "qwen")
    assert loaded["checkpoint"] == "unsloth/Qwen3-0.6B-GGUF:Q4_0"
    assert loaded["recipe"] == "llamacpp"
    assert fake.loaded_models() == ["qwen"]


async def test_load_of_an_unknown_model_is_404_model_not_found() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        response = await load(client, "ghost")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"].startswith("Model 'ghost' was not found.")
    assert {k: v for k, v in error.items() if k != "message"} == {
        "type": "model_not_found",
        "param": "model",
        "code": "model_not_found",
        "requested_model": "ghost",
    }
    assert fake.loaded_models() == []


async def test_load_with_an_empty_name_is_an_unknown_model() -> None:
    # The server reads "" as a name (it is a string) and finds no such model.
    fake = make_fake()
    async with connect(fake) as client:
        response = await load(client, "")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b"{}", b'{"model": "qwen"}', b'{"model_name": 5}', b'["qwen"]'],
    ids=["garbage", "empty", "no-name", "model-key", "name-not-string", "array"],
)
async def test_load_with_bad_json_or_no_model_name_is_400(body: bytes) -> None:
    fake = make_fake()
    async with connect(fake) as client:
        response = await client.post("/api/v1/load", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("Invalid request: ")
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
    assert fake.loaded_models() == []


@pytest.mark.parametrize(
    "options",
    [{"llamacpp_args": None}, {"llamacpp_args": ["--parallel", "1"]}, {"ctx_size": None}],
    ids=["args-null", "args-list", "ctx-null"],
)
async def test_load_with_a_null_or_list_option_breaks_the_parser(options: dict[str, Any]) -> None:
    fake = make_fake()
    async with connect(fake) as client:
        assert (await load(client, "nomic")).status_code == 200
        response = await load(client, "qwen", **options)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "model_load_error"
    assert error["message"].startswith("Failed to load model 'qwen': [json.exception.type_error")
    assert fake.loaded_models() == ["nomic"]
    assert fake.evict_all_count == 0


async def test_load_records_known_options_and_ignores_the_rest() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        options = {"ctx_size": 8192, "llamacpp_backend": "vulkan", "llamacpp_args": "--parallel 1"}
        response = await load(client, "qwen", **options, save_options=False, flavour=None)
        assert response.status_code == 200
        assert (await row(client, "qwen"))["recipe_options"] == options


async def test_same_options_only_refresh_different_options_reload() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen", ctx_size=4096)
        first = await row(client, "qwen")
        assert (await load(client, "qwen", ctx_size=4096)).status_code == 200
        same = await row(client, "qwen")
        assert same["pid"] == first["pid"]
        assert same["last_use"] >= first["last_use"]
        assert (await load(client, "qwen", ctx_size=8192)).status_code == 200
        other = await row(client, "qwen")
    assert other["pid"] != first["pid"]
    assert other["recipe_options"] == {"ctx_size": 8192}
    assert fake.loaded_models() == ["qwen"]


@pytest.mark.virtual_time
async def test_same_options_reload_moves_last_use_in_virtual_time() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen", ctx_size=4096)
        before = await row(client, "qwen")
        await anyio.sleep(30)
        await load(client, "qwen", ctx_size=4096)
        after = await row(client, "qwen")
    assert after["last_use"] == before["last_use"] + 30_000
    assert after["pid"] == before["pid"]


# ---------------------------------------------------------------- per-type LRU


async def test_a_full_type_evicts_its_own_lru_only() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        for name in ("qwen", "nomic", "llama"):
            assert (await load(client, name)).status_code == 200
        body = await health(client)
    assert fake.loaded_models() == ["nomic", "llama"]
    assert body["max_models"] == {
        "llm": 1,
        "embedding": 1,
        "reranking": 1,
        "transcription": 1,
        "image": 1,
        "tts": 1,
    }


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
    fake = make_fake(max_models={"llm": -1})
    async with connect(fake) as client:
        for name in ("qwen", "llama", "phi"):
            await load(client, name)
    assert fake.loaded_models() == ["qwen", "llama", "phi"]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        FakeLemonade(["a"], max_models={"llm": 0})
    with pytest.raises(ValueError):
        FakeLemonade(["a"], max_models={"vision": 1})
    with pytest.raises(ValueError):
        FakeLemonade(["a", "a"])
    with pytest.raises(ValueError):
        FakeModel("a", type="chat")


# ---------------------------------------------------------------- evict-all


async def test_failed_load_evicts_everything_and_a_failed_retry_is_500() -> None:
    fake = make_fake(max_models={"llm": 2})
    async with connect(fake) as client:
        await load(client, "llama")
        await load(client, "nomic")
        fake.fail("qwen")
        response = await load(client, "qwen")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "Failed to load model 'qwen': llama-server failed to start",
            "type": "model_load_error",
            "param": "model",
            "code": "model_load_error",
            "requested_model": "qwen",
        }
    }
    assert fake.loaded_models() == []
    assert fake.evict_all_count == 1


async def test_failed_load_whose_retry_succeeds_is_200_with_everyone_else_gone() -> None:
    fake = make_fake(max_models={"llm": 2})
    async with connect(fake) as client:
        await load(client, "llama")
        await load(client, "nomic")
        fake.fail("qwen", "llama-server exited with code 1", retry_succeeds=True)
        response = await load(client, "qwen")
        assert response.status_code == 200
        assert response.json()["status"] == "success"
        assert [r["model_name"] for r in (await health(client))["all_models_loaded"]] == ["qwen"]
    assert fake.evict_all_count == 1


@pytest.mark.parametrize(
    "message",
    [
        "model file not found",
        "/models/q.gguf does not exist",
        "No such file or directory",
    ],
)
async def test_a_file_not_found_failure_touches_nothing_else(message: str) -> None:
    fake = make_fake(max_models={"llm": 2})
    async with connect(fake) as client:
        await load(client, "llama")
        await load(client, "nomic")
        fake.fail("qwen", message)
        response = await load(client, "qwen")
        assert response.status_code == 500
        assert response.json()["error"]["message"] == f"Failed to load model 'qwen': {message}"
        assert fake.loaded_models() == ["llama", "nomic"]
        assert fake.evict_all_count == 0
        fake.clear_fail("qwen")
        assert (await load(client, "qwen")).status_code == 200


async def test_evict_all_switch_unloads_everything_and_counts() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        await load(client, "nomic")
        fake.evict_all()
        assert (await health(client))["all_models_loaded"] == []
    assert fake.evict_all_count == 1


# ---------------------------------------------------------------- /unload


async def test_unload_by_name_and_by_model_key() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        await load(client, "nomic")
        response = await client.post("/api/v1/unload", json={"model_name": "qwen"})
        assert response.status_code == 200
        assert response.json() == {
            "status": "success",
            "message": "Model unloaded successfully",
            "model_name": "qwen",
        }
        assert fake.loaded_models() == ["nomic"]
        response = await client.post("/api/v1/unload", json={"model": "nomic"})
        assert response.json()["model_name"] == "nomic"
    assert fake.loaded_models() == []


async def test_unload_of_a_model_not_loaded_is_404_with_a_plain_string() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "nomic")
        response = await client.post("/api/v1/unload", json={"model_name": "qwen"})
    assert response.status_code == 404
    assert response.json() == {"error": "Model not loaded: qwen"}
    assert fake.loaded_models() == ["nomic"]


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b"{}", b'{"model_name": ""}', b'{"model_name": null}', b"[]"],
    ids=["empty", "unparseable", "no-name", "empty-name", "null-name", "array"],
)
async def test_unload_without_a_name_unloads_everything(body: bytes) -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        await load(client, "nomic")
        response = await client.post("/api/v1/unload", content=body)
    assert response.status_code == 200
    assert response.json() == {"status": "success", "message": "All models unloaded successfully"}
    assert fake.loaded_models() == []
    assert fake.evict_all_count == 0


# ---------------------------------------------------------------- serialized loads


async def test_a_hung_load_blocks_every_later_load_until_released() -> None:
    fake = make_fake()
    answered: list[tuple[str, int]] = []

    async with connect(fake) as client:
        await load(client, "phi")

        async def load_and_note(name: str) -> None:
            answered.append((name, (await load(client, name)).status_code))

        fake.hang("qwen")
        async with anyio.create_task_group() as tg:
            tg.start_soon(load_and_note, "qwen")
            await fake.wait_hanging("qwen")
            tg.start_soon(load_and_note, "nomic")
            await anyio.wait_all_tasks_blocked()
            assert answered == []
            assert fake.loads_in_flight == 2
            # Neither /health nor /unload waits for the load lock.
            assert (await health(client))["all_models_loaded"] == []  # phi was evicted (LRU)
            unloaded = await client.post("/api/v1/unload", json={"model_name": "phi"})
            assert unloaded.status_code == 404
            assert answered == []
            fake.release("qwen")
    assert answered == [("qwen", 200), ("nomic", 200)]
    assert fake.loaded_models() == ["qwen", "nomic"]
    assert fake.max_concurrent_loads == 2
    assert fake.max_concurrent_loads_of("qwen") == 1
    assert fake.loads_in_flight == 0


async def test_concurrent_loads_of_one_model_are_counted() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        fake.hang("qwen")
        async with anyio.create_task_group() as tg:
            tg.start_soon(load, client, "qwen")
            tg.start_soon(load, client, "qwen")
            await fake.wait_hanging("qwen")
            await anyio.wait_all_tasks_blocked()
            fake.release("qwen")
    assert fake.max_concurrent_loads_of("qwen") == 2
    assert fake.max_concurrent_loads_of("nomic") == 0


async def test_an_abandoned_load_in_process_frees_the_lock() -> None:
    fake = make_fake()
    scope = anyio.CancelScope()

    async def abandoned_load(client: httpx.AsyncClient) -> None:
        with scope:
            await load(client, "qwen")

    async with connect(fake) as client:
        fake.hang("qwen")
        async with anyio.create_task_group() as tg:
            tg.start_soon(abandoned_load, client)
            await fake.wait_hanging("qwen")
            scope.cancel()
        assert fake.loads_in_flight == 0
        (record,) = fake.loads()
        assert record.status is None and record.done_at is not None
        assert (await load(client, "nomic")).status_code == 200
    assert fake.loaded_models() == ["nomic"]


# ---------------------------------------------------------------- last_use and the clock


@pytest.mark.virtual_time
async def test_last_use_is_milliseconds_on_the_virtual_monotonic_clock() -> None:
    booted = anyio.current_time()
    fake = make_fake()
    fake.set_load_delay("qwen", 2.0)
    async with connect(fake) as client:
        await anyio.sleep(10)
        await load(client, "qwen")
        assert (await row(client, "qwen"))["last_use"] == OFFSET + 12_000
        await anyio.sleep(300)
        assert (await row(client, "qwen"))["last_use"] == OFFSET + 12_000
        fake.mark_used("qwen")
        assert (await row(client, "qwen"))["last_use"] == OFFSET + 312_000
    (record,) = fake.loads()
    assert record.at - booted == 10
    assert record.done_at is not None and record.done_at - booted == 12


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


def test_mark_used_of_a_model_not_loaded_raises() -> None:
    with pytest.raises(KeyError):
        make_fake().mark_used("qwen")


# ---------------------------------------------------------------- /health and /models


async def test_health_has_the_documented_shape() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        empty = await health(client)
        await load(client, "qwen", ctx_size=4096, llamacpp_backend="vulkan")
        await load(client, "nomic")
        full = await health(client)
    assert empty == {
        "status": "ok",
        "version": "10.6.0",
        "model_loaded": None,
        "all_models_loaded": [],
        "max_models": full["max_models"],
    }
    assert full["model_loaded"] == "nomic"
    first = full["all_models_loaded"][0]
    assert set(first) == {
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
    assert (first["model_name"], first["type"], first["device"]) == ("qwen", "llm", "gpu")
    assert first["recipe_options"] == {"ctx_size": 4096, "llamacpp_backend": "vulkan"}
    assert isinstance(first["last_use"], int) and isinstance(first["pid"], int)
    assert first["backend_url"].startswith("http://127.0.0.1:")


async def test_newer_fields_are_added_on_request_and_reflect_busy() -> None:
    old, new = make_fake(), make_fake(newer_fields=True, version="10.8.0")
    async with connect(old) as old_client, connect(new) as new_client:
        await load(old_client, "qwen")
        await load(new_client, "qwen")
        assert "is_busy" not in await row(old_client, "qwen")
        idle = await row(new_client, "qwen")
        new.set_busy("qwen", True)
        busy = await row(new_client, "qwen")
        assert (await health(new_client))["version"] == "10.8.0"
    assert (idle["is_busy"], idle["status"], idle["pinned"]) == (False, "ready", False)
    assert (busy["is_busy"], busy["is_streaming"], busy["status"]) == (True, True, "in_use")


async def test_health_faults() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        fake.set_health_fault(HealthFault.NOT_JSON)
        with pytest.raises(json.JSONDecodeError):
            (await client.get("/api/v1/health")).json()
        fake.set_health_fault(HealthFault.WRONG_SHAPE)
        assert not isinstance((await health(client))["all_models_loaded"], list)
        fake.set_health_fault(HealthFault.SERVER_ERROR)
        assert (await client.get("/api/v1/health")).status_code == 500

        fake.set_health_fault(HealthFault.HANG)
        statuses: list[int] = []

        async def poll() -> None:
            statuses.append((await client.get("/api/v1/health")).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await anyio.wait_all_tasks_blocked()
            assert statuses == []
            assert (await client.get("/live")).status_code == 200
            fake.set_health_fault(None)
    assert statuses == [200]


async def test_models_lists_downloaded_models_unless_show_all() -> None:
    fake = FakeLemonade(["qwen", FakeModel("big", downloaded=False)])
    async with connect(fake) as client:
        some = (await client.get("/api/v1/models")).json()
        every = (await client.get("/api/v1/models", params={"show_all": "true"})).json()
    assert [m["id"] for m in some["data"]] == ["qwen"]
    assert [m["id"] for m in every["data"]] == ["qwen", "big"]
    assert every["data"][1] == {
        "id": "big",
        "object": "model",
        "checkpoint": "fake-org/big:Q4_0",
        "recipe": "llamacpp",
        "downloaded": False,
        "labels": [],
    }
    assert fake.requests[1].query == "show_all=true"


async def test_catalog_can_change_under_the_client() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        fake.remove_model("qwen")
        assert (await load(client, "qwen")).status_code == 404
        fake.add_model(FakeModel("gemma", type="reranking"))
        assert (await load(client, "gemma")).status_code == 200
        assert (await row(client, "gemma"))["type"] == "reranking"


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


# ---------------------------------------------------------------- fault switches


async def test_more_health_faults_huge_and_a_non_string_name_and_duplicate_rows() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        fake.set_health_fault(HealthFault.HUGE)
        response = await client.get("/api/v1/health")
        assert response.status_code == 200
        assert int(response.headers["content-length"]) > 2 * 1024 * 1024
        assert response.json()["all_models_loaded"] == []

        fake.set_health_fault(HealthFault.NAME_NOT_STRING)
        rows = (await health(client))["all_models_loaded"]
        assert [r["model_name"] for r in rows] == ["qwen", 42]
        fake.set_health_fault(None)

        fake.set_duplicate_rows(True)
        rows = (await health(client))["all_models_loaded"]
        assert [r["model_name"] for r in rows] == ["qwen", "qwen"]
        assert rows[0] == rows[1]
        fake.set_duplicate_rows(False)
        assert [r["model_name"] for r in (await health(client))["all_models_loaded"]] == ["qwen"]


async def test_fail_unload_answers_500_with_a_plain_string_and_keeps_the_model() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        await load(client, "qwen")
        fake.fail_unload("qwen", "backend would not stop")
        response = await client.post("/api/v1/unload", json={"model_name": "qwen"})
        assert (response.status_code, response.json()) == (
            500,
            {"error": "backend would not stop"},
        )
        assert fake.loaded_models() == ["qwen"]
        missing = await client.post("/api/v1/unload", json={"model_name": "phi"})
        assert missing.status_code == 404  # not loaded: the switch does not apply
        fake.clear_fail_unload("qwen")
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

        fake.hang_unload("qwen")
        async with anyio.create_task_group() as tg:
            tg.start_soon(unload_qwen)
            await fake.wait_hanging_unload("qwen")
            assert fake.loaded_models() == ["qwen"]  # not unloaded yet
            assert (await load(client, "nomic")).status_code == 200  # loads are not held
            assert statuses == []
            fake.release_unload("qwen")
    assert statuses == [200]
    assert fake.loaded_models() == ["nomic"]


async def test_drop_reply_acts_then_the_client_sees_a_dropped_connection() -> None:
    fake = make_fake()
    async with connect(fake) as client:
        fake.drop_reply("qwen")
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await load(client, "qwen")
        assert fake.loaded_models() == ["qwen"]  # the load happened
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/api/v1/unload", json={"model": "qwen"})
        assert fake.loaded_models() == []  # so did the unload
        assert (await load(client, "nomic")).status_code == 200  # other names are answered
        fake.set_health_fault(HealthFault.DROP)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/api/v1/health")
        fake.set_health_fault(None)
        fake.clear_drop_reply("qwen")
        assert (await load(client, "qwen")).status_code == 200
    dropped = [(r.route, r.status, r.dropped) for r in fake.requests]
    assert dropped == [
        ("load", None, True),
        ("unload", None, True),
        ("load", 200, False),
        ("health", None, True),
        ("load", 200, False),
    ]
