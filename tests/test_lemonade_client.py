"""LemonadeClient against httpx.MockTransport handlers (no server involved)."""

from __future__ import annotations

import inspect
import json
import math
import socket
import time
import types
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import attrs
import httpx
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from kit import examples

import slotfsm
from slotfsm.errors import ConfigError, SlotfsmError
from slotfsm.lemonade import (
    DEFAULT_MAX_HEALTH_BYTES,
    DEFAULT_TIMEOUT,
    Health,
    LemonadeClient,
    LemonadeError,
    LoadedModel,
    LoadResult,
    ModelInfo,
    ServerHTTPError,
    ServerParseError,
    ServerTimeout,
    ServerUnreachable,
    SystemInfo,
    _merge,
    _parse_health,
    _parse_model,
)
from slotfsm.testing import FakeLemonade, FakeModel, FakeTiming

BASE = "http://lemonade.test:13305"
KEY = "sk-very-secret-key-123"

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]

HEALTH_SAMPLE: dict[str, Any] = {
    "status": "ok",
    "version": "10.6.0",
    "model_loaded": "Qwen3-0.6B-GGUF",
    "all_models_loaded": [
        {
            "model_name": "Qwen3-0.6B-GGUF",
            "checkpoint": "unsloth/Qwen3-0.6B-GGUF:Q4_0",
            "type": "llm",
            "device": "gpu",
            "backend_url": "http://127.0.0.1:8001/v1",
            "pid": 12345,
            "recipe": "llamacpp",
            "recipe_options": {"ctx_size": 4096, "llamacpp_backend": "vulkan"},
            "last_use": 1420673741,
        }
    ],
    "max_models": {"llm": 1, "embedding": 1, "reranking": 1, "tts": -1},
    "websocket_port": 9000,
}

LOAD_OK = {
    "status": "success",
    "model_name": "m",
    "checkpoint": "org/repo:Q4_0",
    "recipe": "llamacpp",
}


def make(handler: Handler, **kwargs: Any) -> tuple[LemonadeClient, list[httpx.Request]]:
    """A client whose transport is ``handler``, and the list of requests it saw."""
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
        return result

    return LemonadeClient(BASE, transport=httpx.MockTransport(record), **kwargs), seen


def reply(status: int, body: object = None, **kwargs: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, **kwargs)
        return httpx.Response(status, json=body, **kwargs)

    return handler


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)

    return handler


def health_with(**fields: Any) -> Handler:
    return reply(200, {"status": "ok", **fields})


# -- load --------------------------------------------------------------------


@pytest.mark.anyio
async def test_load_posts_to_api_v1_and_drops_none_options() -> None:
    client, seen = make(reply(200, LOAD_OK))
    async with client:
        result = await client.load(
            "m",
            ctx_size=8192,
            llamacpp_backend="vulkan",
            llamacpp_args="--parallel 1",
            mmproj=None,
            flag=True,
            temperature=0.5,
        )
    assert result == LoadResult(model_name="m", checkpoint="org/repo:Q4_0", recipe="llamacpp")
    [request] = seen
    assert request.method == "POST"
    assert request.url.path == "/api/v1/load"
    assert str(request.url).startswith(BASE + "/api/v1/")
    assert json.loads(request.content) == {
        "model_name": "m",
        "ctx_size": 8192,
        "llamacpp_backend": "vulkan",
        "llamacpp_args": "--parallel 1",
        "flag": True,
        "temperature": 0.5,
    }
    assert b"null" not in request.content


@pytest.mark.anyio
async def test_load_has_no_read_timeout_but_other_routes_do() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/load"):
            return httpx.Response(200, json=LOAD_OK)
        return httpx.Response(200, json=HEALTH_SAMPLE)

    client, seen = make(handler, timeout=3.0)
    async with client:
        await client.load("m")
        await client.health()
    load, health = seen
    assert load.extensions["timeout"] == {"connect": 3.0, "read": None, "write": 3.0, "pool": 3.0}
    assert health.extensions["timeout"] == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}


@pytest.mark.anyio
async def test_load_minimal_answer_falls_back_to_requested_name() -> None:
    client, _ = make(reply(200, {"status": "success"}))
    async with client:
        assert await client.load("m") == LoadResult(model_name="m", checkpoint=None, recipe=None)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options",
    [
        {"llamacpp_args": ["--parallel", "1"]},
        {"llamacpp_args": 1},
        {"llamacpp_args": True},
        {"ctx_size": [8192]},
        {"extra": {"a": 1}},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
    ],
)
async def test_load_rejects_bad_options_before_any_request(options: dict[str, Any]) -> None:
    client, seen = make(reply(200, LOAD_OK))
    async with client:
        with pytest.raises(ConfigError):
            await client.load("m", **options)
    assert seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["", "   ", None, 7])
async def test_load_rejects_empty_model_name(name: Any) -> None:
    client, seen = make(reply(200, LOAD_OK))
    async with client:
        with pytest.raises(ValueError, match="model_name"):
            await client.load(name)
    assert seen == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"status": "success", "model_name": ""},
        {"status": "success", "model_name": "m", "checkpoint": 3},
        {"status": "success", "model_name": "m", "recipe": ["llamacpp"]},
        ["success"],
    ],
)
async def test_load_malformed_success_is_a_parse_error(body: object) -> None:
    client, _ = make(reply(200, body))
    async with client:
        with pytest.raises(ServerParseError, match="POST /api/v1/load"):
            await client.load("m")


# -- auth and secrecy --------------------------------------------------------


@pytest.mark.anyio
async def test_bearer_header_is_sent_when_a_key_is_given() -> None:
    with_key, seen_with = make(reply(200, HEALTH_SAMPLE), api_key=KEY)
    without_key, seen_without = make(reply(200, HEALTH_SAMPLE))
    async with with_key, without_key:
        await with_key.health()
        await without_key.health()
    assert seen_with[0].headers["Authorization"] == f"Bearer {KEY}"
    assert "Authorization" not in seen_without[0].headers


@pytest.mark.anyio
async def test_requests_name_the_client_and_ask_for_json() -> None:
    client, seen = make(reply(200, LOAD_OK))
    async with client:
        await client.load("m")
    (request,) = seen
    assert request.headers["User-Agent"] == f"slotfsm/{slotfsm.__version__}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Host"] == "lemonade.test:13305"
    assert request.headers["Content-Length"] == str(len(request.content))


@pytest.mark.anyio
async def test_a_base_url_with_a_path_keeps_it() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=HEALTH_SAMPLE)

    transport = httpx.MockTransport(handler)
    async with LemonadeClient(BASE + "/lemonade/", transport=transport) as client:
        await client.health()
        await client.live()
    assert [str(r.url) for r in seen] == [
        BASE + "/lemonade/api/v1/health",
        BASE + "/lemonade/live",
    ]


@pytest.mark.anyio
async def test_api_key_never_shows_in_repr_or_errors() -> None:
    client, _ = make(reply(401, {"error": "Invalid or missing API key"}), api_key=KEY)
    echo, _ = make(reply(401, {"error": f"Invalid API key {KEY}"}), api_key=KEY)
    assert repr(client) == f"LemonadeClient({BASE!r})"
    assert KEY not in repr(client)
    assert KEY not in str(client)
    async with client, echo:
        for probe in (client.health(), client.load("m"), client.unload("m"), echo.health()):
            with pytest.raises(ServerHTTPError) as info:
                await probe
            exc = info.value
            assert exc.status == 401
            for text in (str(exc), repr(exc), exc.message, *map(str, exc.args)):
                assert KEY not in text
        assert await client.live() is False


@pytest.mark.parametrize("key", ["", "has space", "new\nline", "tab\tkey", "ключ"])
def test_bad_api_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(ValueError) as info:
        LemonadeClient(BASE, api_key=key)
    if key:
        assert key not in str(info.value)


@pytest.mark.parametrize("url", ["", "127.0.0.1:13305", "ftp://host/", "http://"])
def test_bad_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        LemonadeClient(url)


# -- unload ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["", "   ", "\t\n", None])
async def test_unload_without_a_name_sends_nothing(name: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("an unload without a name must never be sent")

    client, seen = make(handler)
    async with client:
        with pytest.raises(ValueError, match="model_name"):
            await client.unload(name)
    assert seen == []


@pytest.mark.anyio
async def test_unload_posts_the_name_and_returns_true() -> None:
    body = {"status": "success", "message": "Model unloaded successfully", "model_name": "m"}
    client, seen = make(reply(200, body))
    async with client:
        assert await client.unload("m") is True
    [request] = seen
    assert request.method == "POST"
    assert request.url.path == "/api/v1/unload"
    assert json.loads(request.content) == {"model_name": "m"}


@pytest.mark.anyio
async def test_unload_of_a_model_not_loaded_is_false_not_an_error() -> None:
    client, seen = make(reply(404, {"error": "Model not loaded: m"}))
    async with client:
        assert await client.unload("m") is False
    assert len(seen) == 1


@pytest.mark.anyio
async def test_unload_other_404_is_an_error() -> None:
    client, _ = make(reply(404, text="Not Found"))
    async with client:
        with pytest.raises(ServerHTTPError) as info:
            await client.unload("m")
    assert info.value.status == 404


# -- error bodies ------------------------------------------------------------


@pytest.mark.anyio
async def test_nested_error_object_of_load() -> None:
    error = {
        "message": "Model 'x' was not found. Pull it first.",
        "type": "model_not_found",
        "param": "model",
        "code": "model_not_found",
        "requested_model": "x",
    }
    client, _ = make(reply(404, {"error": error}))
    async with client:
        with pytest.raises(ServerHTTPError) as info:
            await client.load("x")
    exc = info.value
    assert (exc.status, exc.message, exc.code) == (404, error["message"], "model_not_found")
    assert exc.route == "POST /api/v1/load"
    assert "POST /api/v1/load" in str(exc)
    assert "404" in str(exc)
    assert isinstance(exc, LemonadeError)
    assert isinstance(exc, SlotfsmError)


@pytest.mark.anyio
async def test_nested_error_without_code_uses_type() -> None:
    client, _ = make(reply(409, {"error": {"message": "pinned", "type": "slots_pinned_error"}}))
    async with client:
        with pytest.raises(ServerHTTPError) as info:
            await client.load("x")
    assert (info.value.status, info.value.code) == (409, "slots_pinned_error")


@pytest.mark.anyio
async def test_plain_string_error_of_unload() -> None:
    client, _ = make(reply(500, {"error": "backend refused"}))
    async with client:
        with pytest.raises(ServerHTTPError) as info:
            await client.unload("m")
    exc = info.value
    assert (exc.status, exc.message, exc.code) == (500, "backend refused", None)
    assert "POST /api/v1/unload" in str(exc)
    assert "500" in str(exc)


@pytest.mark.anyio
async def test_non_json_error_body_keeps_the_first_200_chars() -> None:
    text = "<html>" + "x" * 1000
    client, _ = make(reply(500, text=text))
    async with client:
        with pytest.raises(ServerHTTPError) as info:
            await client.health()
    assert info.value.message == text[:200]
    assert info.value.code is None


@pytest.mark.anyio
async def test_empty_error_body_uses_the_reason_phrase() -> None:
    client, _ = make(reply(502))
    async with client:
        with pytest.raises(ServerHTTPError) as info:
            await client.health()
    assert info.value.message == "Bad Gateway"


# -- 2xx that is not JSON, and bounded bodies --------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("route", ["load", "unload", "health"])
@pytest.mark.parametrize("content", [b"<html>ok</html>", b"", b"\xff\xfe", b"[" * 100_000])
async def test_2xx_non_json_is_a_parse_error(route: str, content: bytes) -> None:
    client, _ = make(reply(200, content=content))
    async with client:
        call = getattr(client, route)
        with pytest.raises(ServerParseError, match=f"/api/v1/{route}"):
            await (call() if route == "health" else call("m"))


class Endless:
    """An endless response body that counts the chunks it handed out."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.served = 0

    def __aiter__(self) -> Endless:
        return self

    async def __anext__(self) -> bytes:
        self.served += 1
        return self.chunk


# httpx leaves its inner iterators to the garbage collector when a streamed
# read is abandoned; trio reports that as a ResourceWarning.
abandoned_stream = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.mark.anyio
@abandoned_stream
async def test_huge_streamed_2xx_body_is_read_bounded() -> None:
    body = Endless(b"x" * 100)
    client, _ = make(lambda request: httpx.Response(200, content=body), max_health_bytes=1000)
    async with client:
        with pytest.raises(ServerParseError, match="body larger than 1000 bytes"):
            await client.health()
    assert body.served <= 11


@pytest.mark.anyio
@abandoned_stream
async def test_huge_streamed_error_body_is_read_bounded() -> None:
    body = Endless(b"y" * 100)
    client, _ = make(lambda request: httpx.Response(500, content=body), max_body_bytes=1000)
    async with client:
        with pytest.raises(ServerHTTPError) as info:
            await client.load("m")
    assert info.value.status == 500
    assert info.value.message == "y" * 200
    assert body.served <= 11


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 500])
async def test_declared_huge_body_is_not_read_at_all(status: int) -> None:
    body = Endless(b"z" * 100)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Content-Length": str(1 << 40)}, content=body)

    client, _ = make(handler, max_health_bytes=1000)
    async with client:
        with pytest.raises(LemonadeError) as info:
            await client.health()
    assert body.served == 0
    if status == 200:
        assert isinstance(info.value, ServerParseError)
        assert "body larger than 1000 bytes" in str(info.value)
    else:
        assert isinstance(info.value, ServerHTTPError)
        assert info.value.message == "Internal Server Error"


@pytest.mark.anyio
async def test_body_at_the_limit_is_accepted() -> None:
    content = json.dumps({"status": "ok", "all_models_loaded": []}).encode()
    client, _ = make(reply(200, content=content), max_body_bytes=len(content))
    async with client:
        assert (await client.health()).models == ()


# -- transport failures, and no retries --------------------------------------

CALLS: list[tuple[str, tuple[str, ...]]] = [
    ("load", ("m",)),
    ("unload", ("m",)),
    ("health", ()),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "args"), CALLS)
@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError, ServerUnreachable),
        (httpx.ReadError, ServerUnreachable),
        (httpx.RemoteProtocolError, ServerUnreachable),
        (httpx.ConnectTimeout, ServerTimeout),
        (httpx.ReadTimeout, ServerTimeout),
        (httpx.PoolTimeout, ServerTimeout),
    ],
)
async def test_transport_failures_are_typed_and_sent_once(
    method: str,
    args: tuple[str, ...],
    raised: type[httpx.TransportError],
    expected: type[LemonadeError],
) -> None:
    client, seen = make(raising(raised), api_key=KEY)
    async with client:
        with pytest.raises(expected) as info:
            await getattr(client, method)(*args)
    assert len(seen) == 1
    assert f"/api/v1/{method}" in str(info.value)
    assert KEY not in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "args"), CALLS)
@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_error_statuses_are_sent_once(
    method: str, args: tuple[str, ...], status: int
) -> None:
    client, seen = make(reply(status, {"error": "nope"}, headers={"Retry-After": "0"}))
    async with client:
        with pytest.raises(ServerHTTPError):
            await getattr(client, method)(*args)
    assert len(seen) == 1


@pytest.mark.anyio
async def test_refused_connection_on_a_real_socket_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with LemonadeClient(f"http://127.0.0.1:{port}", timeout=2.0) as client:
        with pytest.raises(ServerUnreachable, match=f"127.0.0.1:{port}"):
            await client.health()
        assert await client.live() is False


# -- cancellation: the caller's load timeout ---------------------------------


@pytest.mark.anyio
async def test_move_on_after_cancels_a_hanging_load_cleanly() -> None:
    never = anyio.Event()
    cancelled = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/load":
            try:
                await never.wait()
            finally:
                cancelled.set()
        return httpx.Response(200, json=HEALTH_SAMPLE)

    client, seen = make(handler)
    async with client:
        with anyio.move_on_after(0.05) as scope:
            await client.load("m")
        assert scope.cancelled_caught
        assert cancelled.is_set()
        assert [r.url.path for r in seen] == ["/api/v1/load"]
        # The client is still usable afterwards.
        assert (await client.health()).names == {"Qwen3-0.6B-GGUF"}
    assert len(seen) == 2


# -- health ------------------------------------------------------------------


@pytest.mark.anyio
async def test_health_parses_the_documented_shape() -> None:
    client, seen = make(reply(200, HEALTH_SAMPLE))
    async with client:
        health = await client.health()
    assert seen[0].method == "GET"
    assert seen[0].url.path == "/api/v1/health"
    assert health.status == "ok"
    assert health.version == "10.6.0"
    assert health.models == (
        LoadedModel(
            name="Qwen3-0.6B-GGUF",
            type="llm",
            last_use=1420673741,
            checkpoint="unsloth/Qwen3-0.6B-GGUF:Q4_0",
            recipe="llamacpp",
            busy=False,
            status=None,
        ),
    )
    assert dict(health.max_models) == {"llm": 1, "embedding": 1, "reranking": 1, "tts": -1}
    assert health.names == frozenset({"Qwen3-0.6B-GGUF"})
    assert health.get("Qwen3-0.6B-GGUF") is health.models[0]
    assert health.get("other") is None
    with pytest.raises(TypeError):
        health.max_models["llm"] = 2  # type: ignore[index]
    assert hash(health) == hash(Health("ok", "10.6.0", health.models, dict(health.max_models)))


@pytest.mark.anyio
async def test_health_accepts_the_old_loaded_key_and_minimal_entries() -> None:
    client, _ = make(health_with(loaded=[{"model_name": "a"}, {"model_name": "b"}]))
    async with client:
        health = await client.health()
    assert health.names == {"a", "b"}
    assert health.models[0] == LoadedModel(name="a")
    assert health.version is None
    assert dict(health.max_models) == {}


@pytest.mark.anyio
async def test_health_with_nothing_loaded() -> None:
    client, _ = make(health_with(model_loaded=None, all_models_loaded=[], max_models={"llm": 1}))
    async with client:
        health = await client.health()
    assert health.models == ()
    assert health.names == frozenset()


@pytest.mark.anyio
async def test_health_reads_the_newer_per_model_fields() -> None:
    models = [
        {"model_name": "a", "is_busy": True, "is_streaming": False, "status": "in_use"},
        {"model_name": "b", "is_busy": False, "is_streaming": True, "pinned": True},
        {"model_name": "c", "is_busy": False, "is_streaming": False, "status": "ready"},
        {"model_name": "d", "is_busy": None, "status": None, "future": {"x": [1]}},
    ]
    client, _ = make(health_with(all_models_loaded=models, something_new=[1, 2]))
    async with client:
        health = await client.health()
    busy = {m.name: m.busy for m in health.models}
    assert busy == {"a": True, "b": True, "c": False, "d": False}
    assert [m.status for m in health.models] == ["in_use", None, "ready", None]


@pytest.mark.anyio
async def test_health_merges_a_model_listed_twice() -> None:
    models = [
        {"model_name": "a", "last_use": 100, "type": "llm", "status": "ready"},
        {"model_name": "b", "last_use": 5},
        {"model_name": "a", "last_use": 300, "type": "embedding", "is_busy": True},
        {"model_name": "a"},
    ]
    client, _ = make(health_with(all_models_loaded=models))
    async with client:
        health = await client.health()
    assert [m.name for m in health.models] == ["a", "b"]
    assert health.get("a") == LoadedModel(
        name="a", type="llm", last_use=300, busy=True, status="ready"
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"status": "ok"},
        {"status": "ok", "all_models_loaded": None},
        {"status": "ok", "all_models_loaded": {"model_name": "a"}},
        {"status": 1, "all_models_loaded": []},
        {"status": "ok", "version": 10, "all_models_loaded": []},
        {"status": "ok", "all_models_loaded": [], "max_models": [1]},
        {"status": "ok", "all_models_loaded": [], "max_models": {"llm": "1"}},
        {"status": "ok", "all_models_loaded": [], "max_models": {"llm": True}},
        ["ok"],
    ],
)
async def test_a_reading_that_cannot_be_parsed_is_a_parse_error(body: object) -> None:
    client, _ = make(reply(200, body))
    async with client:
        with pytest.raises(ServerParseError, match="GET /api/v1/health"):
            await client.health()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("row", "why"),
    [
        ("a", "model #1 is not a JSON object"),
        ({"model_name": 3}, "model #1: 'model_name' is not a non-empty string"),
        ({"model_name": ""}, "model #1: 'model_name' is not a non-empty string"),
        ({"name": "x"}, "model #1: 'model_name' is not a non-empty string"),
        ({"model_name": "x", "last_use": True}, "model 'x': 'last_use' is bool, not an int"),
        ({"model_name": "x", "last_use": 1.5}, "model 'x': 'last_use' is float, not an int"),
        ({"model_name": "x", "last_use": "1"}, "model 'x': 'last_use' is str, not an int"),
        ({"model_name": "x", "type": 1}, "model 'x': 'type' is int, not a string"),
        ({"model_name": "x", "is_busy": "yes"}, "model 'x': 'is_busy' is str, not a bool"),
        ({"model_name": "x", "is_streaming": 1}, "model 'x': 'is_streaming' is int, not a bool"),
        ({"model_name": "x", "pinned": "no"}, "model 'x': 'pinned' is str, not a bool"),
        ({"model_name": "x", "recipe_options": []}, "'recipe_options' is not a JSON object"),
    ],
)
async def test_a_malformed_row_is_left_out_and_logged(
    row: object, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"model_name": "a", "last_use": 1}, row, {"model_name": "b"}]
    client, _ = make(health_with(all_models_loaded=rows))
    async with client:
        health = await client.health()
    assert health.names == {"a", "b"}
    assert health.skipped == 1
    assert why in caplog.text and "that row is left out" in caplog.text


@pytest.mark.anyio
async def test_the_same_answer_again_is_the_same_reading_without_parsing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body byte for byte the previous one gives the previous reading; any other is parsed.

    A reading that left a row out is parsed (and logged) every time.
    """
    bodies = [
        {"status": "ok", "all_models_loaded": [{"model_name": "a", "last_use": 1}]},
        {"status": "ok", "all_models_loaded": [{"model_name": "a", "last_use": 1}]},
        {"status": "ok", "all_models_loaded": [{"model_name": "a", "last_use": 2}]},
        {"status": "ok", "all_models_loaded": [{"model_name": "a", "last_use": True}]},
        {"status": "ok", "all_models_loaded": [{"model_name": "a", "last_use": True}]},
    ]
    answers = iter(bodies)
    client, _ = make(lambda request: httpx.Response(200, json=next(answers)))
    async with client:
        readings = [await client.health() for _ in bodies]
    first, again, used, bad, bad_again = readings
    assert again is first
    assert used is not first and used.get("a") == LoadedModel("a", last_use=2)
    assert bad.skipped == bad_again.skipped == 1 and bad_again is not bad
    assert caplog.text.count("that row is left out") == 2


@pytest.mark.anyio
async def test_a_reading_without_status_is_read() -> None:
    client, _ = make(reply(200, {"all_models_loaded": [{"model_name": "a"}]}))
    async with client:
        health = await client.health()
    assert (health.status, health.names) == (None, {"a"})


# -- what 11.7.0 adds: rows in full, models, system-info, the prefix -----------


REAL_ROW: dict[str, Any] = {
    "backend_alive": True,
    "backend_health": "ready",
    "backend_url": "http://127.0.0.1:41234/v1",
    "checkpoint": "/home/someone/.local/share/lemonade/models/Qwen3-Coder-30B-A3B-Q4_K_M.gguf",
    "device": "cpu",
    "is_busy": False,
    "is_streaming": False,
    "last_use": 3928460,
    "launch_command": [
        "/home/someone/.local/share/lemonade/bin/llamacpp/cpu/llama-server",
        "-m",
        "/home/someone/.local/share/lemonade/models/Qwen3-Coder-30B-A3B-Q4_K_M.gguf",
        "--ctx-size",
        "4096",
        "--port",
        "41234",
        "--jinja",
        "--metrics",
    ],
    "loaded": True,
    "max_context_window": 262144,
    "model_name": "Qwen3-Coder-30B-A3B-Q4_K_M",
    "pid": 570912,
    "pinned": False,
    "recipe": "llamacpp",
    "recipe_options": {"ctx_size": 4096, "llamacpp_args": "", "llamacpp_backend": "cpu"},
    "residency_class": "standard",
    "slot_pool": "standard/llm",
    "status": "ready",
    "type": "llm",
    "watchdog_reset": False,
}
"""An 11.7.0 row (the shape of the recorded ones) with paths of a typical install."""


@pytest.mark.anyio
async def test_a_full_row_keeps_what_slotfsm_does_not_interpret() -> None:
    client, _ = make(health_with(all_models_loaded=[REAL_ROW], websocket_port=9000))
    async with client:
        health = await client.health()
    (model,) = health.models
    assert model.model_file == REAL_ROW["launch_command"][2]
    assert model.checkpoint == REAL_ROW["checkpoint"]
    assert model.raw == REAL_ROW and model.raw["backend_url"] == "http://127.0.0.1:41234/v1"
    assert health.raw["websocket_port"] == 9000
    with pytest.raises(TypeError):
        model.raw["pid"] = 1  # type: ignore[index]
    assert model == attrs_evolve_raw(model)  # raw takes no part in equality


def attrs_evolve_raw(model: LoadedModel) -> LoadedModel:
    return LoadedModel(
        name=model.name,
        type=model.type,
        last_use=model.last_use,
        checkpoint=model.checkpoint,
        recipe=model.recipe,
        busy=model.busy,
        status=model.status,
        model_file=model.model_file,
    )


@pytest.mark.parametrize(
    ("command", "file"),
    [(None, None), (["llama-server"], None), (["llama-server", "-m"], None), (["-m", 3], None)],
)
@pytest.mark.anyio
async def test_a_row_without_a_usable_launch_command_has_no_model_file(
    command: object, file: str | None
) -> None:
    row = {"model_name": "a", "launch_command": command}
    client, _ = make(health_with(all_models_loaded=[row]))
    async with client:
        assert (await client.health()).models[0].model_file == file


def test_ten_thousand_real_rows_fit_the_default_health_cap() -> None:
    rows = [dict(REAL_ROW, model_name=f"model-{n:05d}", pid=n) for n in range(10_000)]
    size = len(json.dumps({"status": "ok", "all_models_loaded": rows}).encode())
    assert 8_000_000 < size < DEFAULT_MAX_HEALTH_BYTES  # about 850 bytes a row


@pytest.mark.anyio
async def test_a_health_reading_over_the_cap_is_refused_and_said_loudly_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = {"status": "ok", "all_models_loaded": [REAL_ROW] * 20}
    client, _ = make(reply(200, big), max_health_bytes=10_000, max_body_bytes=1 << 20)
    async with client:
        for _ in range(3):
            with pytest.raises(ServerParseError, match="body larger than 10000 bytes"):
                await client.health()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "raise max_health_bytes" in warnings[0].getMessage()


@pytest.mark.anyio
async def test_health_has_its_own_cap_larger_than_other_bodies() -> None:
    big = {"status": "ok", "all_models_loaded": [REAL_ROW] * 20}
    client, _ = make(reply(200, big), max_body_bytes=1_000)
    async with client:
        assert len((await client.health()).models) == 1  # the same row twenty times


# -- reading a large /health fast, to the same result ------------------------------

ROUTE = "GET /api/v1/health"


class Text(str):
    """A string that ``json.loads`` never makes, which a row may still hold."""


class Table(dict[str, Any]):
    """Likewise, a mapping."""


def by_field(names: Any, strings: Any, ints: Any, bools: Any, options: Any, commands: Any) -> Any:
    return st.fixed_dictionaries(
        {},
        optional={
            "model_name": names,
            "type": strings,
            "checkpoint": strings,
            "recipe": strings,
            "status": strings,
            "last_use": ints,
            "is_busy": bools,
            "is_streaming": bools,
            "pinned": bools,
            "recipe_options": options,
            "launch_command": commands,
            "pid": st.integers(0, 1 << 20),
        },
    )


WELL_FORMED = by_field(
    names=st.sampled_from(["a", "b"]),
    strings=st.sampled_from([None, "llm", "", "/models/a.gguf"]),
    ints=st.sampled_from([None, 0, 7, -1, 1 << 70]),
    bools=st.sampled_from([None, True, False]),
    options=st.sampled_from([None, {}, {"ctx_size": 4096}]),
    commands=st.sampled_from(
        [None, [], ["-m"], ["srv", "-m", "/m/a.gguf"], ["-m", 3], ["-m", ""], ["srv", "--jinja"]]
    ),
)
ANY_ROW = by_field(
    names=st.sampled_from(["a", "b", Text("a"), "", 3, None, ["a"]]),
    strings=st.sampled_from([None, "llm", "", Text("x"), 1, True, 1.5, [], {}]),
    ints=st.sampled_from([None, 0, 7, 1 << 70, True, False, 1.0, "1", None]),
    bools=st.sampled_from([None, True, False, 0, 1, 1.0, "yes", []]),
    options=st.sampled_from([None, {}, Table(a=1), [], "x", 0]),
    commands=st.sampled_from(
        [None, ["srv", "-m", "/m/a.gguf"], ["-m", Text("/t")], "-m /m/a.gguf", ("-m", "/m"), {}]
    ),
)
ENTRIES = st.lists(
    st.one_of(WELL_FORMED, ANY_ROW, WELL_FORMED.map(Table), st.sampled_from(["a", None, [], 3])),
    max_size=5,
)


def read_row_by_row(entries: list[Any]) -> tuple[dict[str, LoadedModel], int]:
    """What the field-by-field reader makes of each row: the models by name, the rows left out."""
    models: dict[str, LoadedModel] = {}
    skipped = 0
    for index, entry in enumerate(entries):
        try:
            model = _parse_model(ROUTE, index, entry)
        except ServerParseError:
            skipped += 1
            continue
        seen = models.get(model.name)
        models[model.name] = model if seen is None else _merge(seen, model)
    return models, skipped


@settings(max_examples=examples(400))
@given(ENTRIES)
def test_a_reading_is_what_the_field_by_field_reader_makes_of_each_row(entries: list[Any]) -> None:
    health = _parse_health(ROUTE, {"status": "ok", "all_models_loaded": entries})
    expected, skipped = read_row_by_row(entries)
    assert health.skipped == skipped
    assert health.models == tuple(expected.values())
    for model, want in zip(health.models, expected.values(), strict=True):
        assert (model.model_file, model.busy, model.last_use) == (
            want.model_file,
            want.busy,
            want.last_use,
        )
        assert model.raw == want.raw and isinstance(model.raw, types.MappingProxyType)
        assert health.get(model.name) is model
    assert health.names == frozenset(expected)
    # Every field of both classes is set, and the reading is the one Health(...) builds.
    for value in (health, *health.models):
        for field in attrs.fields(type(value)):
            getattr(value, field.name)
    built = Health("ok", None, health.models, {}, {"all_models_loaded": entries}, skipped)
    assert health == built and hash(health) == hash(built) and repr(health) == repr(built)


def test_a_row_read_from_health_is_read_only_though_not_copied() -> None:
    row = dict(REAL_ROW)
    health = _parse_health(ROUTE, {"status": "ok", "all_models_loaded": [row]})
    (model,) = health.models
    with pytest.raises(TypeError):
        model.raw["pid"] = 1  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        model.raw = {}  # type: ignore[misc]
    assert model.raw == REAL_ROW and health.raw["all_models_loaded"][0] is row


def test_reading_ten_times_the_rows_costs_about_ten_times_as_much() -> None:
    def cost(rows: int) -> float:
        """The least of several runs: other work on the machine only ever adds time."""
        models = [
            {"model_name": f"m{n}", "type": "llm", "last_use": n, "launch_command": ["-m", "f"]}
            for n in range(rows)
        ]
        body = json.dumps({"status": "ok", "all_models_loaded": models})
        best = math.inf
        for _ in range(5):
            doc = json.loads(body)
            start = time.perf_counter()
            health = _parse_health(ROUTE, doc)
            best = min(best, time.perf_counter() - start)
            assert len(health.models) == rows
        return best

    small, big = cost(1_000), cost(10_000)
    assert big < 30 * small, f"{big / small:.1f}x the time for 10x the rows"


@pytest.mark.anyio
async def test_model_info_answers_the_canonical_id_and_the_checkpoint() -> None:
    fake = FakeLemonade([FakeModel("tiny", checkpoint="/models/tiny.gguf"), FakeModel("hub")])
    async with LemonadeClient(BASE, transport=fake.transport()) as client:
        local = await client.model_info("extra.tiny")
        hub = await client.model_info("hub")
        with pytest.raises(ServerHTTPError) as info:
            await client.model_info("extra.hub")
    assert local == ModelInfo("tiny", "/models/tiny.gguf", "llamacpp", "extra_models_dir")
    assert local.raw["downloaded"] is True
    assert (hub.id, hub.checkpoint, hub.source) == ("hub", "fake-org/hub:Q4_0", "huggingface")
    assert (info.value.status, info.value.code) == (404, "model_not_found")
    assert [r.path for r in fake.requests] == [
        "/api/v1/models/extra.tiny",
        "/api/v1/models/hub",
        "/api/v1/models/extra.hub",
    ]


@pytest.mark.anyio
async def test_model_info_quotes_the_name_and_refuses_a_bad_answer() -> None:
    client, seen = make(reply(200, {"id": 3}))
    async with client:
        with pytest.raises(ServerParseError, match="'id' is not a non-empty string"):
            await client.model_info("a/b c")
        with pytest.raises(ValueError):
            await client.model_info("")
    assert seen[0].url.raw_path == b"/api/v1/models/a%2Fb%20c"


@pytest.mark.anyio
async def test_system_info_tells_which_backends_load() -> None:
    fake = FakeLemonade(["m"], backends={"cpu": "installed", "rocm": "unsupported"})
    async with LemonadeClient(BASE, transport=fake.transport()) as client:
        info = await client.system_info()
    assert dict(info.llamacpp_backends) == {"cpu": "installed", "rocm": "unsupported"}
    assert info.default_backend == "cpu"
    assert [info.allows_backend(b) for b in ("auto", "cpu", "rocm", "vulkan")] == [
        True,
        True,
        False,
        False,
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"OS Version": "x"}, SystemInfo()),
        (
            {"recipes": {"llamacpp": {"backends": {"cpu": {"devices": []}}}}},
            SystemInfo(),
        ),
    ],
)
async def test_system_info_of_a_server_that_says_little(body: object, expected: SystemInfo) -> None:
    client, _ = make(reply(200, body))
    async with client:
        assert await client.system_info() == expected


@pytest.mark.anyio
async def test_system_info_of_the_wrong_shape_is_a_parse_error() -> None:
    client, _ = make(reply(200, {"recipes": {"llamacpp": {"backends": {"cpu": "on"}}}}))
    async with client:
        with pytest.raises(ServerParseError, match="system-info"):
            await client.system_info()


@pytest.mark.anyio
@pytest.mark.parametrize("prefix", ["/v1", "/v1/", "/api/v1"])
async def test_the_api_prefix_can_be_v1(prefix: str) -> None:
    client, seen = make(health_with(all_models_loaded=[]), api_prefix=prefix)
    async with client:
        await client.health()
        await client.unload("m")
    assert client.api_prefix == prefix.rstrip("/")
    assert [r.url.path for r in seen] == [
        f"{client.api_prefix}/health",
        f"{client.api_prefix}/unload",
    ]


@pytest.mark.parametrize("prefix", ["/api/v0", "api/v1", "", "/v2"])
def test_other_api_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="api_prefix"):
        LemonadeClient(BASE, api_prefix=prefix)


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_the_default_timeout_outlasts_an_evict_all_of_ten_models() -> None:
    """11.7.0 blocks /health for ~2.1 s per evicted model: ten must not look unreachable."""
    names = [f"m{n}" for n in range(10)]
    fake = FakeLemonade(names, max_models={"llm": -1}, timing=FakeTiming.REAL)
    async with fake, LemonadeClient(BASE, transport=fake.transport()) as client:
        for name in names:
            await client.load(name)
        with fake.failing("broken"):
            fake.add_model("broken")
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(load_quietly, client, "broken"))
                await anyio.sleep(0.5)
                started = anyio.current_time()
                health = await client.health()  # waits for the evictions
                waited = anyio.current_time() - started
                assert health.names == set()
    assert waited == pytest.approx(10 * 2.1 + 0.1 - 0.5)
    assert waited < DEFAULT_TIMEOUT


async def load_quietly(client: LemonadeClient, name: str) -> None:
    with pytest.raises(ServerHTTPError):
        await client.load(name)


# -- live --------------------------------------------------------------------


@pytest.mark.anyio
async def test_live_uses_the_unprefixed_route() -> None:
    client, seen = make(reply(200, {"status": "ok"}))
    async with client:
        assert await client.live() is True
    assert seen[0].method == "GET"
    assert seen[0].url.path == "/live"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "handler",
    [
        reply(503, {"status": "ok"}),
        reply(200, {"status": "starting"}),
        reply(200, text="ok"),
        raising(httpx.ConnectError),
        raising(httpx.ReadTimeout),
    ],
)
async def test_live_is_false_for_anything_but_ok(handler: Handler) -> None:
    client, seen = make(handler)
    async with client:
        assert await client.live() is False
    assert len(seen) == 1
