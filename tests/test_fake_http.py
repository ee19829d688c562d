"""The fake Lemonade served on a real loopback socket by the kit's own HTTP server."""

from __future__ import annotations

import urllib.parse
from typing import Any

import anyio
import httpx
import pytest

from slotfsm.testing import FakeLemonade, FakeModel, FakeTiming

pytestmark = pytest.mark.anyio

# Generous bounds for things that should take milliseconds; they only turn a hang into a failure.
PROMPTLY = 5.0


def make_fake(**kwargs: Any) -> FakeLemonade:
    return FakeLemonade(["qwen", "llama", FakeModel("nomic", type="embedding")], **kwargs)


def port_of(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


def client_port(response: httpx.Response) -> int:
    """The local port of the connection a response came over."""
    address = response.extensions["network_stream"].get_extra_info("client_addr")
    return int(address[1])


async def exchange(url: str, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes it."""
    received = bytearray()
    with anyio.fail_after(PROMPTLY):
        async with await anyio.connect_tcp("127.0.0.1", port_of(url)) as stream:
            await stream.send(data)
            try:
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return bytes(received)


async def test_routes_answer_over_a_real_socket() -> None:
    fake = make_fake(api_key="k3y")
    auth = {"Authorization": "Bearer k3y"}
    async with fake.serve() as url, httpx.AsyncClient(base_url=url) as client:
        assert url.startswith("http://127.0.0.1:")
        live = await client.get("/live")
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        refused = await client.get("/api/v1/health")
        assert (refused.status_code, refused.json()) == (
            401,
            {"error": "Invalid or missing API key"},
        )
        wrong_method = await client.get("/v1/load", headers=auth)
        assert wrong_method.status_code == 405
        assert wrong_method.json() == {"error": "Method Not Allowed. Use POST for this endpoint"}
        assert (await client.get("/api/v1/nope", headers=auth)).status_code == 404
        loaded = await client.post("/api/v0/load", json={"model_name": "qwen"}, headers=auth)
        assert (loaded.status_code, loaded.json()["model_name"]) == (200, "qwen")
        missing = await client.post("/api/v1/unload", json={"model_name": "llama"}, headers=auth)
        assert (missing.status_code, missing.json()) == (404, {"error": "Model not loaded: llama"})
        body = (await client.get("/v0/health", headers=auth)).json()
        assert body["model_loaded"] == "qwen"
        everything = await client.post("/api/v1/unload", content=b"", headers=auth)
        assert everything.json() == {
            "status": "success",
            "message": "All models unloaded successfully",
        }
        assert loaded.headers["content-type"] == "application/json"
    assert fake.loaded_models() == []
    assert [r.status for r in fake.requests] == [200, 401, 405, 404, 200, 404, 200, 200]
    assert fake.loads()[0].body == {"model_name": "qwen"}


async def test_sequential_requests_share_one_kept_alive_connection() -> None:
    fake = make_fake()
    ports: set[int] = set()
    async with fake.serve() as url, httpx.AsyncClient(base_url=url) as client:
        for _ in range(5):
            response = await client.get("/api/v1/health")
            assert response.status_code == 200 and "connection" not in response.headers
            ports.add(client_port(response))
        response = await client.post("/api/v1/load", json={"model_name": "qwen"})
        assert response.status_code == 200
        ports.add(client_port(response))
    assert len(ports) == 1
    assert len(fake.requests) == 6


async def test_connection_close_is_honoured() -> None:
    fake = make_fake()
    async with fake.serve() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/api/v1/health", headers={"Connection": "close"})
        assert response.headers["connection"] == "close"
        # The server closes its side: reading until EOF returns instead of timing out.
        answer = await exchange(url, b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'{"status": "ok"}')


async def test_a_hung_load_does_not_block_health_on_another_connection() -> None:
    fake = make_fake()
    statuses: list[int] = []
    async with fake.serve() as url, httpx.AsyncClient(base_url=url) as client:

        async def load_qwen() -> None:
            response = await client.post("/api/v1/load", json={"model_name": "qwen"})
            statuses.append(response.status_code)

        hang = fake.hanging("qwen")
        async with anyio.create_task_group() as tg:
            tg.start_soon(load_qwen)
            await fake.wait_hanging("qwen")
            with anyio.fail_after(PROMPTLY):
                polled = await client.get("/api/v1/health")
            assert polled.status_code == 200
            assert polled.json()["all_models_loaded"] == []
            assert statuses == []
            hang.off()
    assert statuses == [200]
    assert fake.loaded_models() == ["qwen"]


async def test_a_load_carries_on_after_its_client_gives_up() -> None:
    fake = make_fake()
    scope = anyio.CancelScope()
    async with fake.serve() as url, httpx.AsyncClient(base_url=url) as client:

        async def abandoned_load() -> None:
            with scope:
                await client.post("/api/v1/load", json={"model_name": "qwen"})

        hang = fake.hanging("qwen")
        async with anyio.create_task_group() as tg:
            tg.start_soon(abandoned_load)
            await fake.wait_hanging("qwen")
            scope.cancel()
        assert fake.loads_in_flight == 1  # the server is still working on it
        hang.off()
        with anyio.fail_after(PROMPTLY):
            while "qwen" not in fake.loaded_models():
                await fake.wait_changed()
        queued = await client.post("/api/v1/load", json={"model_name": "nomic"})
        assert queued.status_code == 200
    assert fake.loaded_models() == ["qwen", "nomic"]
    assert [r.status for r in fake.loads()] == [200, 200]


async def test_leaving_the_context_closes_promptly_even_with_a_hung_load() -> None:
    fake = make_fake()
    failures: list[BaseException] = []
    with anyio.fail_after(PROMPTLY):
        # Exits in reverse: the server closes first, while the load is still hung.
        async with (
            httpx.AsyncClient() as client,
            anyio.create_task_group() as tg,
            fake.serve() as url,
        ):

            async def hung_load() -> None:
                try:
                    await client.post(f"{url}/api/v1/load", json={"model_name": "qwen"})
                except httpx.TransportError as exc:
                    failures.append(exc)

            fake.hanging("qwen")
            tg.start_soon(hung_load)
            await fake.wait_hanging("qwen")
        async with httpx.AsyncClient() as late:
            with pytest.raises(httpx.ConnectError):
                await late.get(f"{url}/live")
    assert len(failures) == 1
    assert fake.loads_in_flight == 0
    assert fake.loads()[0].status is None


async def test_an_error_in_the_body_propagates_unwrapped() -> None:
    with pytest.raises(KeyError, match="boom"):
        async with make_fake().serve():
            raise KeyError("boom")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"POST /api/v1/load HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
        (b"GET /live HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400),
        (b"BROKEN\r\n\r\n", 400),
        (b"GET /live HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /live HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"GET /live HTTP/1.1\r\n\r\n", 400),
    ],
    ids=[
        "head-too-large",
        "body-too-large",
        "bad-length",
        "bad-line",
        "http2",
        "bad-header",
        "no-host",
    ],
)
async def test_malformed_requests_are_refused_and_closed(request_bytes: bytes, status: int) -> None:
    async with make_fake().serve() as url:
        answer = await exchange(url, request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nconnection: close\r\n" in answer.lower()


async def test_a_chunked_request_body_is_read() -> None:
    fake = make_fake()
    body = b'{"model_name": "qwen"}'
    request = (
        b"POST /api/v1/load HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    )
    async with fake.serve() as url:
        answer = await exchange(url, request)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert fake.loaded_models() == ["qwen"]


async def test_pipelined_requests_and_http10_close() -> None:
    fake = make_fake()
    body = b'{"model_name": "qwen"}'
    pipelined = (
        b"POST /api/v1/load HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    ) + b"GET /live HTTP/1.0\r\n\r\n"
    async with fake.serve() as url:
        answer = await exchange(url, pipelined)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert b"HTTP/1.1 200 OK" in rest and rest.endswith(b'{"status": "ok"}')
    assert b"connection: close" in rest.lower()
    assert fake.loaded_models() == ["qwen"]
    assert [r.route for r in fake.requests] == ["load", "live"]


async def test_a_dropped_reply_closes_the_connection_without_an_answer() -> None:
    fake = make_fake()
    fake.dropping_replies("qwen")
    body = b'{"model_name": "qwen"}'
    request = (
        b"POST /api/v1/load HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    ) + body
    async with fake.serve() as url:
        answer = await exchange(url, request)
        async with httpx.AsyncClient(base_url=url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/api/v1/load", json={"model_name": "qwen"})
            live = await client.get("/live")  # the server itself carries on
    assert answer == b""
    assert live.status_code == 200
    assert fake.loaded_models() == ["qwen"]
    assert [(r.status, r.dropped) for r in fake.loads()] == [(None, True), (None, True)]


async def test_real_timing_over_loopback_health_waits_for_an_unload() -> None:
    """``FakeTiming.REAL``: an unload takes 2.1 s; ``/health`` waits for it, ``/live`` does not."""
    fake = make_fake(timing=FakeTiming.REAL)
    order: list[str] = []
    async with fake.serve() as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.post("/api/v1/load", json={"model_name": "qwen"})

        async def unload() -> None:
            await client.post("/api/v1/unload", json={"model_name": "qwen"})
            order.append("unloaded")

        async def health() -> None:
            body = (await client.get("/api/v1/health")).json()
            order.append(f"health lists {[r['model_name'] for r in body['all_models_loaded']]}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(unload)
            while not any(r.route == "unload" for r in fake.requests):
                await fake.wait_changed()
            tg.start_soon(health)
            assert (await client.get("/live")).status_code == 200
            order.append("live")
    assert order == ["live", "unloaded", "health lists []"]
