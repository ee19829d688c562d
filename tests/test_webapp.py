"""The reference web app (examples/webapp): its API in process, its page in headless Chromium."""

from __future__ import annotations

import json
import re
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from kit import ControllerFactory
from prometheus_client.parser import text_string_to_metric_families
from webapp_kit import ChatFake, CuttableProxy, StreamingTransport, serve_app, sse_events

from examples.webapp import create_app
from slotfsm import Controller, ModelEntry, SlotConfig, SlotState
from slotfsm.testing import FakeLemonade

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def running_app(
    ctl: Controller, fake: FakeLemonade, upstream: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, ChatFake]]:
    """The app on ``ctl`` with its lifespan running, and a client that streams its answers."""
    chat = ChatFake(fake)
    async with anyio.create_task_group() as group:
        transport = upstream or StreamingTransport(chat, group)
        app = create_app(ctl, httpx.AsyncClient(base_url="http://lemonade", transport=transport))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=StreamingTransport(app, group), base_url="http://web"
            ) as client,
        ):
            yield client, chat
        group.cancel_scope.cancel()


async def test_slots_models_and_the_page(
    make_controller: ControllerFactory, fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    ctl = make_controller(SlotConfig("chat"), SlotConfig("code"))
    async with running_app(ctl, fake) as (client, _):
        answer = (await client.get("/slots")).json()
        assert answer["last_id"] == 0
        assert answer["slots"] == [snap.to_dict() for snap in ctl.snapshots().values()]
        assert [s["slot"] for s in answer["slots"]] == ["chat", "code"]
        assert (await client.get("/models")).json() == {"models": list(models)}
        await ctl.load("chat", "alpha")
        answer = (await client.get("/slots")).json()
        assert answer["last_id"] == ctl.snapshot("chat").history[-1].id == 3
        assert answer["slots"][0]["state"] == "loaded"
        page = await client.get("/")
        assert page.headers["content-type"].startswith("text/html")
        states = re.findall(r'<g class="state" data-state="(\w+)">', page.text)
        assert states == [s.value for s in SlotState]
        assert "<script>" in page.text and not re.search(r'(src|href)="(https?:)?//', page.text)


def readme_json(name: str) -> Any:
    """The JSON block the README shows after ``<!-- json: name -->``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- json: {name} -->\n```json\n(.*?)```", readme, re.S)
    assert found, f"README lost its {name} JSON"
    return json.loads(found[1])


def shape(value: Any) -> Any:
    """A JSON value's keys, in order and nested; or its type."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    return type(value).__name__


async def test_the_readme_shows_the_json_and_the_routes_as_they_are(
    make_controller: ControllerFactory, fake: FakeLemonade
) -> None:
    ctl = make_controller(SlotConfig("chat"), SlotConfig("code"))
    async with running_app(ctl, fake) as (client, _):
        loaded = (await client.post("/slots/chat/load", json={"model": "alpha"})).json()
        await client.post("/slots/code/load", json={"model": "corrupt"})
        refused = ctl.snapshot("code").history[-1].to_dict()
    assert refused["failure"] is not None and loaded["error"] is None
    assert shape(readme_json("snapshot")) == shape(loaded)
    assert shape(readme_json("transition")) == shape(json.loads(json.dumps(refused)))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/python -m examples.webapp\n" in readme
    async with httpx.AsyncClient() as upstream:
        routes = create_app(ctl, upstream).routes
    for route in routes:
        for method in {"GET", "POST"} & set(getattr(route, "methods", ())):
            assert f"| `{method} {getattr(route, 'path', '')}` |" in readme


async def test_load_unload_cancel_and_what_misuse_answers(
    make_controller: ControllerFactory, fake: FakeLemonade
) -> None:
    ctl = make_controller(SlotConfig("chat"), SlotConfig("code"))
    async with running_app(ctl, fake) as (client, _):
        loaded = await client.post("/slots/chat/load", json={"model": "alpha"})
        assert loaded.status_code == 200
        assert loaded.json() == ctl.snapshot("chat").to_dict()
        assert loaded.json()["state"] == "loaded" and loaded.json()["model"] == "alpha"
        refused = await client.post("/slots/code/load", json={"model": "corrupt"})
        assert refused.status_code == 200  # a failed load is a state
        assert refused.json()["state"] == "error"
        assert refused.json()["error"]["kind"] == "sha256_mismatch"
        unloaded = await client.post("/slots/chat/unload")
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "idle"
        assert fake.loaded_models() == []

        hang = fake.hanging("beta")
        async with anyio.create_task_group() as group:
            answers: list[httpx.Response] = []

            async def load_beta() -> None:
                answers.append(await client.post("/slots/code/load", json={"model": "beta"}))

            group.start_soon(load_beta)
            await fake.wait_hanging("beta")
            cancelled = await client.post("/slots/code/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "error"
        assert cancelled.json()["error"]["kind"] == "cancelled"
        assert answers[0].json() == cancelled.json()
        hang.off()

        for method, path, body, status in [
            ("POST", "/slots/nope/load", {"model": "alpha"}, 404),
            ("POST", "/slots/nope/unload", None, 404),
            ("POST", "/slots/chat/load", {"model": "nope"}, 404),
            ("POST", "/slots/chat/load", {"name": "alpha"}, 400),
            ("POST", "/slots/chat/load", ["alpha"], 400),
            ("GET", "/slots/chat/load", None, 405),
        ]:
            answer = await client.request(method, path, json=body)
            assert answer.status_code == status, (path, body, answer.text)
        broken = await client.post("/slots/chat/load", content=b"{not json")
        assert broken.status_code == 400 and "JSON object" in broken.json()["error"]
        await client.post("/slots/chat/load", json={"model": "gamma"})
        taken = await client.post("/slots/code/load", json={"model": "gamma"})
        assert taken.status_code == 409 and "gamma" in taken.json()["error"]


async def read_transitions(
    response: httpx.Response, until: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The ``transition`` events of an event stream, up to and including the one ``until`` wants."""
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        async for event in sse_events(response):
            if event.get("event") == "transition":
                record = json.loads(event["data"])
                assert event["id"] == str(record["id"])
                seen.append(record)
                if until(record):
                    break
    return seen


def settled(slot: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record["slot"] == slot and record["dest"] == state


async def test_a_reconnect_with_last_event_id_misses_no_transition(
    make_controller: ControllerFactory, fake: FakeLemonade
) -> None:
    ctl = make_controller(SlotConfig("chat"), SlotConfig("code"))
    async with running_app(ctl, fake) as (client, _), ctl.transitions() as published:
        since = (await client.get("/slots")).json()["last_id"]
        async with client.stream("GET", "/events", params={"since": since}) as first:
            assert first.headers["content-type"].startswith("text/event-stream")
            await client.post("/slots/chat/load", json={"model": "alpha"})
            seen = await read_transitions(first, settled("chat", "loaded"))
        # Disconnected: what happens now is replayed on reconnection.
        await client.post("/slots/chat/unload")
        await client.post("/slots/code/load", json={"model": "beta"})
        resume = {"Last-Event-ID": str(seen[-1]["id"])}
        async with client.stream("GET", "/events", headers=resume) as second:
            seen += await read_transitions(second, settled("code", "loaded"))
    assert [r["id"] for r in seen] == [t.id async for t in published]
    assert [(r["slot"], r["dest"]) for r in seen] == [
        ("chat", "validating"),
        ("chat", "loading"),
        ("chat", "loaded"),
        ("chat", "unloading"),
        ("chat", "idle"),
        ("code", "validating"),
        ("code", "loading"),
        ("code", "loaded"),
    ]


async def test_records_gone_from_the_ring_arrive_as_a_gap_event(
    make_controller: ControllerFactory, fake: FakeLemonade
) -> None:
    ctl = make_controller(SlotConfig("chat"), transition_ring=2)
    async with running_app(ctl, fake) as (client, _):
        await client.post("/slots/chat/load", json={"model": "alpha"})
        await client.post("/slots/chat/unload")  # records 1 to 5; the ring keeps 4 and 5
        async with client.stream("GET", "/events", headers={"Last-Event-ID": "1"}) as events:
            kinds: list[tuple[str, str]] = []
            with anyio.fail_after(10):
                async for event in sse_events(events):
                    if "event" in event:
                        kinds.append((event["event"], event["data"]))
                        if event.get("id") == "5":
                            break
        assert kinds[0] == ("gap", json.dumps({"gap": {"after": 1, "missed": 2}}))
        assert [json.loads(data)["id"] for _, data in kinds[1:]] == [4, 5]
        for bad in ("-1", "x", "1.5"):
            refused = await client.get("/events", headers={"Last-Event-ID": bad})
            assert refused.status_code == 400, bad


async def test_the_chat_proxy_holds_the_slot_in_use_while_the_answer_streams(
    make_controller: ControllerFactory, fake: FakeLemonade
) -> None:
    ctl = make_controller(SlotConfig("chat"), SlotConfig("code"))
    async with running_app(ctl, fake) as (client, chat):
        await client.post("/slots/chat/load", json={"model": "alpha"})
        request = {"model": "whatever", "messages": [{"role": "user", "content": "hi"}]}
        async with ctl.transitions() as records:
            async with client.stream(
                "POST", "/slots/chat/chat/completions", json=request
            ) as answer:
                assert answer.status_code == 200
                assert answer.headers["content-type"] == "text/event-stream"
                chunks = answer.aiter_bytes()
                assert b"Hel" in await anext(chunks)
                # The upstream waits for chat.go: the answer is still streaming.
                assert ctl.snapshot("chat").in_use == 1
                chat.go.set()
                rest = b"".join([chunk async for chunk in chunks])
            assert b"lo" in rest and rest.endswith(b"data: [DONE]\n\n")
            with anyio.fail_after(10):
                uses = []
                async for record in records:
                    if record.trigger == "use":
                        uses.append(record.reason)
                        if len(uses) == 2:
                            break
        assert uses == ["serving: in use", "no longer in use"]
        assert ctl.snapshot("chat").in_use == 0
        assert chat.bodies == [{**request, "model": "alpha"}]

        idle = await client.post("/slots/code/chat/completions", json=request)
        assert idle.status_code == 409 and "holds no model" in idle.json()["error"]
        assert (await client.post("/slots/nope/chat/completions", json=request)).status_code == 404
        assert ctl.snapshot("code").in_use == 0 and len(chat.bodies) == 1


async def test_a_client_that_leaves_mid_answer_releases_the_slot(
    make_controller: ControllerFactory, fake: FakeLemonade
) -> None:
    ctl = make_controller(SlotConfig("chat"))
    async with running_app(ctl, fake) as (client, chat):
        await client.post("/slots/chat/load", json={"model": "alpha"})
        async with ctl.transitions() as records:
            async with client.stream(
                "POST", "/slots/chat/chat/completions", json={"messages": []}
            ) as answer:
                assert b"Hel" in await anext(answer.aiter_bytes())
                assert ctl.snapshot("chat").in_use == 1
            # Gone before the end, while the server still has more to say.
            with anyio.fail_after(10):
                async for record in records:
                    if record.trigger == "use" and record.reason == "no longer in use":
                        break
        assert ctl.snapshot("chat").in_use == 0 and not chat.go.is_set()


async def test_the_chat_proxy_answers_502_when_lemonade_is_unreachable(
    make_controller: ControllerFactory, fake: FakeLemonade
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    ctl = make_controller(SlotConfig("chat"))
    async with running_app(ctl, fake, httpx.MockTransport(refuse)) as (client, _):
        await client.post("/slots/chat/load", json={"model": "alpha"})
        answer = await client.post("/slots/chat/chat/completions", json={"messages": []})
        assert answer.status_code == 502 and "refused" in answer.json()["error"]
        assert ctl.snapshot("chat").in_use == 0


async def test_metrics_are_prometheus_text(
    make_controller: ControllerFactory, fake: FakeLemonade
) -> None:
    ctl = make_controller(SlotConfig("chat"))
    async with running_app(ctl, fake) as (client, _):
        await client.post("/slots/chat/load", json={"model": "alpha"})
        answer = await client.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(answer.text)}
        assert {
            "slotfsm_slot_state",
            "slotfsm_loads",
            "slotfsm_failures",
            "slotfsm_load_seconds",
            "slotfsm_pending_cleanups",
        } <= set(families)
        loaded = [
            s.value
            for s in families["slotfsm_slot_state"].samples
            if s.labels == {"slot": "chat", "state": "loaded"}
        ]
        assert loaded == [1.0]


def test_python_m_examples_webapp_serves_the_fake_and_stops_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.webapp", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "no URL printed within 60 s"
        line = process.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+/) \(fake Lemonade on http://", line)
        assert found, line
        with httpx.Client(base_url=found[1], timeout=30) as client:
            assert [s["slot"] for s in client.get("slots").json()["slots"]] == ["chat", "code"]
            loaded = client.post("slots/chat/load", json={"model": "chat-model"}).json()
            assert loaded["state"] == "loaded"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()


# -- the page, in a real browser ----------------------------------------------------


def chromium_or_skip(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """The Chromium executable and Playwright's async API, or skip saying what is missing."""
    executable = next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    reason = None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        reason = "Playwright for Python is not installed (pip install -e '.[test]')"
    if executable is None:
        reason = "no Chromium on PATH (Debian: apt-get install chromium)"
    if reason is not None:
        # Printed past the output capture: a skip's reason is otherwise shown only with -rs.
        plugins = request.config.pluginmanager
        reporter, capture = (
            plugins.get_plugin("terminalreporter"),
            plugins.get_plugin("capturemanager"),
        )
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\n{request.node.name} skipped: {reason}")
        pytest.skip(reason)
    assert executable is not None
    return executable, async_playwright


def test_the_page_shows_each_slot_live_and_misses_nothing_across_a_reconnect(
    request: pytest.FixtureRequest, fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    executable, async_playwright = chromium_or_skip(request)

    async def scenario() -> None:
        ctl = Controller(
            lemonade_url="http://lemonade",
            transport=fake.transport(),
            registry=list(models.values()),
            slots=[SlotConfig("chat"), SlotConfig("code")],
        )
        upstream = httpx.AsyncClient(base_url="http://lemonade", transport=fake.transport())
        app = create_app(ctl, upstream)
        with anyio.fail_after(60):  # a bound for a hung browser, not a measurement
            async with (
                serve_app(app) as url,
                ctl.transitions() as published,
                CuttableProxy(int(url.rsplit(":", 1)[1].strip("/"))).running() as proxy,
                httpx.AsyncClient(base_url=url) as api,
                async_playwright() as playwright,
            ):
                browser = await playwright.chromium.launch(executable_path=executable)
                page = await browser.new_page()
                await page.goto(proxy.url)
                await page.wait_for_function("document.body.dataset.connected === 'yes'")
                state_of = 'tr[data-slot="{}"] td.state[data-state="{}"]'.format
                await page.wait_for_selector(state_of("chat", "idle"), timeout=5000)

                # After a load, the page shows the slot loaded within one second.
                await api.post("slots/chat/load", json={"model": "alpha"})
                await page.wait_for_selector(state_of("chat", "loaded"), timeout=1000)
                current = "#lifecycle .state.current"
                assert await page.get_attribute(current, "data-state") == "loaded"  # chat: first
                await page.click('tr[data-slot="code"]')
                assert await page.get_attribute(current, "data-state") == "idle"

                # The stream drops; what happens before the browser is back is not lost.
                shown = await page.eval_on_selector_all(
                    "#log li[data-id]", "items => items.map(i => Number(i.dataset.id))"
                )
                proxy.cut()
                await page.wait_for_function("document.body.dataset.connected === 'no'")
                await api.post("slots/chat/unload")
                await api.post("slots/code/load", json={"model": "beta"})
                proxy.resume()
                await page.wait_for_selector(state_of("code", "loaded"), timeout=10_000)
                await page.wait_for_selector(state_of("chat", "idle"), timeout=10_000)
                assert await page.get_attribute(current, "data-state") == "loaded"  # code
                listed = await page.eval_on_selector_all(
                    "#log li[data-id]", "items => items.map(i => Number(i.dataset.id))"
                )
                await browser.close()
        resumed = f"last-event-id: {shown[-1]}".encode()
        assert any(resumed in head.lower() for head in proxy.heads), proxy.heads
        assert listed == [t.id async for t in published]
        assert len(listed) == len(shown) + 5  # chat: unloading, idle; code: three to loaded

    anyio.run(scenario, backend="asyncio")  # Playwright and uvicorn run on asyncio
