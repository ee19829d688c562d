"""Server faults: what each slot says when Lemonade misbehaves (issue 6, "Server faults").

Every test runs a Controller against the fake Lemonade served on a real
loopback socket (or, where the row asks for a server that does something the
fake cannot, a few lines of raw TCP in the test), and checks the same four
promises:

* the affected slot ends in a state that tells the truth, with a reason
  (its state, its ``error.kind`` and a fact in ``error.message``);
* the other slots are untouched;
* no load is retried (the fake's request log counts every ``/load``);
* the Controller keeps running: a later command on another slot works.

Timeouts are short (``http_timeout`` 0.3 s, ``load_timeout`` 0.5 s) only in
the tests that wait for one; waiting is on events, never on sleeps.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import pytest
from checks import failed, holds, loads_of, unloads_of

from slotfsm import (
    Controller,
    ModelEntry,
    PreloadError,
    SlotConfig,
    SlotSnapshot,
    SlotState,
)
from slotfsm.lemonade import DEFAULT_MAX_HEALTH_BYTES
from slotfsm.testing import FakeLemonade, FakeModel, HealthFault

pytestmark = pytest.mark.anyio

PROMPTLY = 5.0
"""A bound on things that take milliseconds: it only turns a hang into a failure."""
SHORT_HTTP = 0.3
SHORT_LOAD = 0.5
SERVER_KEY = "srv-K3y-0123456789abcdef"
CLIENT_KEY = "cli-Wr0ng-fedcba9876543210"


# -- a fake that can go away and come back on the same port ----------------------------


class Loopback:
    """The fake served on one loopback port, stopped and started while a controller runs.

    The server runs in its own task, so the test can stop it in the middle of
    a ``Controller`` block without breaking the nesting of cancel scopes.
    """

    def __init__(self, fake: FakeLemonade, task_group: anyio.abc.TaskGroup, port: int) -> None:
        self._fake = fake
        self._task_group = task_group
        self.port = port
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._stop, self._stopped = anyio.Event(), anyio.Event()
        url = await self._task_group.start(self._run)
        port = urllib.parse.urlsplit(url).port
        assert port is not None
        self.port = port

    async def stop(self) -> None:
        """Close the listener and every connection (hung handlers included)."""
        self._stop.set()
        with anyio.fail_after(PROMPTLY):
            await self._stopped.wait()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[str]) -> None:
        try:
            async with self._fake.serve(port=self.port) as url:
                task_status.started(url)
                await self._stop.wait()
        finally:
            self._stopped.set()


@asynccontextmanager
async def loopback(fake: FakeLemonade, port: int = 0) -> AsyncIterator[Loopback]:
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        server = Loopback(fake, tg, port)
        await server.start()
        try:
            yield server
        except Exception as exc:
            failure = exc  # re-raised below, not wrapped in an exception group
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def free_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    await listener.aclose()
    return port


@asynccontextmanager
async def raw_server(
    handle: Callable[[anyio.abc.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """A raw TCP server on loopback: ``handle(stream)`` serves each connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    failure: Exception | None = None
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle, tg)
        try:
            yield f"http://127.0.0.1:{port}"
        except Exception as exc:
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


# -- building and checking ---------------------------------------------------------------


def controller(
    url: str,
    models: dict[str, ModelEntry],
    slots: Iterable[str | SlotConfig] = ("a", "b", "c"),
    **options: Any,
) -> Controller:
    options.setdefault("http_timeout", PROMPTLY)
    configs = [s if isinstance(s, SlotConfig) else SlotConfig(s) for s in slots]
    return Controller(lemonade_url=url, registry=list(models.values()), slots=configs, **options)


def clean_idle(snap: SlotSnapshot) -> None:
    assert (snap.state, snap.model, snap.error) == (SlotState.IDLE, None, None), snap


async def stop_the_server_during(
    server: Loopback,
    ctl: Controller,
    slot: str,
    busy: SlotState,
    command: Callable[[], Awaitable[SlotSnapshot]],
    hanging: Callable[[], Awaitable[None]],
) -> SlotSnapshot:
    """Run ``command`` until its request hangs with ``slot`` in ``busy``; stop the server.

    Returns the snapshot ``command`` answered with once the server was gone.
    """
    result: list[SlotSnapshot] = []

    async def run() -> None:
        result.append(await command())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(PROMPTLY):
            await hanging()
        assert ctl.snapshot(slot).state is busy
        await server.stop()
    (snap,) = result
    return snap


# -- connection refused -------------------------------------------------------------------


async def test_connection_refused_at_start(
    fake: FakeLemonade, models: dict[str, ModelEntry], caplog: pytest.LogCaptureFixture
) -> None:
    port = await free_port()
    async with controller(f"http://127.0.0.1:{port}", models) as ctl:
        snap = await ctl.load("a", "alpha")
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_FAILED,
            "loading 'alpha' failed: POST /api/v1/load",
            f"server unreachable at http://127.0.0.1:{port}",
        )
        assert snap.model is None
        assert ctl.idle_watcher.failures >= 2  # the poll at start and the re-read after the load
        assert "health poll failed" in caplog.text
        clean_idle(ctl.snapshot("b"))

        # The server comes up on that port: the controller carries on, retries nothing.
        async with loopback(fake, port):
            holds(await ctl.load("b", "beta"), "beta")
            assert ctl.snapshot("a") == snap
        assert [r.body["model_name"] for r in fake.loads()] == ["beta"]
        assert fake.loaded_models() == ["beta"]


async def test_connection_refused_mid_run(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        await server.stop()

        snap = await ctl.load("b", "beta")
        failed(snap, SlotState.ERROR, PreloadError.LOAD_FAILED, "server unreachable")
        assert await ctl.refresh() is None  # a failed poll is shown to no slot...
        holds(ctl.snapshot("a"), "alpha")  # ...so slot a keeps what it last knew

        await server.start()  # back on the same port, still holding alpha
        holds(await ctl.load("c", "gamma"), "gamma")
        holds(ctl.snapshot("a"), "alpha")
        assert ctl.snapshot("b") == snap
    assert loads_of(fake, "beta") == []  # it never got there, and was not retried
    assert fake.loaded_models() == ["alpha", "gamma"]


# -- the server going away in the middle of a request ---------------------------------------


async def test_server_goes_away_during_a_load(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        fake.hanging("beta")
        load, hanging = partial(ctl.load, "b", "beta"), partial(fake.wait_hanging, "beta")
        snap = await stop_the_server_during(server, ctl, "b", SlotState.LOADING, load, hanging)
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_FAILED,
            "loading 'beta' failed",
            "server unreachable",
        )
        assert snap.model is None
        assert snap.cleanups == ("beta",)  # sent, answer lost: the server may have it
        holds(ctl.snapshot("a"), "alpha")

        await server.start()
        holds(await ctl.load("c", "gamma"), "gamma")
        assert await ctl.refresh() is not None  # a reading that does not list it: dropped
        assert ctl.snapshot("b") == attrs.evolve(snap, cleanups=())
        assert ctl.ledger.owed() == ()
    assert [r.status for r in loads_of(fake, "beta")] == [None]  # one, never answered
    assert fake.loaded_models() == ["alpha", "gamma"]


async def test_server_goes_away_during_an_unload(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        hung_unload = fake.hanging_unload("alpha")
        unload, hanging = partial(ctl.unload, "a"), partial(fake.wait_hanging_unload, "alpha")
        snap = await stop_the_server_during(server, ctl, "a", SlotState.UNLOADING, unload, hanging)
        # The answer was lost: the slot keeps the model until a reading says it is gone.
        failed(
            snap,
            SlotState.LOADED,
            PreloadError.UNLOAD_FAILED,
            "unloading 'alpha' failed",
            "server unreachable",
        )
        assert (snap.model, snap.leaving, snap.cleanups) == ("alpha", (), ())
        assert ctl.ledger.owner_of("alpha") == "a"
        holds(ctl.snapshot("b"), "beta")

        await server.start()
        hung_unload.off()
        assert fake.loaded_models() == ["alpha", "beta"]  # the unload never happened
        clean_idle(await ctl.unload("a"))  # an explicit unload tries again, and works
        holds(await ctl.load("c", "gamma"), "gamma")
    assert [r.status for r in unloads_of(fake, "alpha")] == [None, 200]
    assert fake.loaded_models() == ["beta", "gamma"]
    assert len(fake.loads()) == 3


# -- a server that accepts the connection and never answers ------------------------------


async def test_server_that_never_answers_health(
    fake: FakeLemonade, models: dict[str, ModelEntry], caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        loopback(fake) as server,
        controller(server.url, models, http_timeout=SHORT_HTTP) as ctl,
    ):
        holds(await ctl.load("a", "alpha"), "alpha")
        failures = ctl.idle_watcher.failures
        with fake.health_fault(HealthFault.HANG):
            with anyio.fail_after(PROMPTLY):
                assert await ctl.refresh() is None
                # It reached the server and gave up waiting for an answer that never came.
                assert fake.health_polls()[-1].status is None
                # A load still works: its re-read of /health times out and is only logged.
                holds(await ctl.load("b", "beta"), "beta")
            assert ctl.idle_watcher.failures == failures + 2
            assert "no complete answer within 0.3 s" in caplog.text or "ReadTimeout" in caplog.text
            holds(ctl.snapshot("a"), "alpha")
            assert fake.unloads() == []
        health = await ctl.refresh()
        assert health is not None and health.names == {"alpha", "beta"}
    assert len(fake.loads()) == 2


async def test_server_that_accepts_and_never_answers_anything(
    models: dict[str, ModelEntry], caplog: pytest.LogCaptureFixture
) -> None:
    """A silent TCP peer: every /health times out, the /load is abandoned at its deadline."""
    received: list[bytearray] = []

    async def hold(stream: anyio.abc.SocketStream) -> None:
        data = bytearray()
        received.append(data)
        async with stream:
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    slots = [SlotConfig("a", load_timeout=SHORT_LOAD), SlotConfig("b")]
    async with (
        raw_server(hold) as url,
        controller(url, models, slots, http_timeout=SHORT_HTTP) as ctl,
    ):
        with anyio.fail_after(PROMPTLY):
            assert await ctl.refresh() is None
            snap = await ctl.load("a", "alpha")
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_TIMEOUT,
            "loading 'alpha' did not finish within 0.5 s "
            "(the timer fired while waiting for the /load of 'alpha'); not retried",
        )
        error = snap.error
        assert error is not None
        assert (error.expected, error.found) == (
            "a loaded model within 0.5 s",
            "still waiting for the /load of 'alpha'",
        )
        clean_idle(ctl.snapshot("b"))
        assert "health poll failed" in caplog.text
        with anyio.fail_after(PROMPTLY):
            clean_idle(await ctl.reset("a"))  # the controller still takes commands
            assert await ctl.refresh() is None
    sent = b"".join(received)
    assert sent.count(b"POST /api/v1/load ") == 1  # sent once, never again
    assert sent.count(b"GET /api/v1/health ") >= 3


async def test_server_that_never_answers_a_load(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    slots = ["a", SlotConfig("b", load_timeout=SHORT_LOAD), "c"]
    async with loopback(fake) as server, controller(server.url, models, slots) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        hang = fake.hanging("beta")
        with anyio.fail_after(PROMPTLY):
            snap = await ctl.load("b", "beta")
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_TIMEOUT,
            "did not finish within 0.5 s (the timer fired while waiting for the /load of 'beta')",
        )
        assert snap.cleanups == ("beta",)  # not cancelled: the server goes on with it
        holds(ctl.snapshot("a"), "alpha")
        assert fake.loads_in_flight == 1  # the server is still working on it
        clean_idle(await ctl.unload("a"))  # other commands go on (an unload needs no load lock)

        # The load finishes late: it is unloaded at once, once, and b stays in error.
        async with ctl.transitions() as stream:
            hang.off()
            with anyio.fail_after(PROMPTLY):
                async for record in stream:
                    if record.trigger == "cleanup":
                        assert (record.slot, record.model) == ("b", "beta"), record
                        assert record.reason.startswith("stray gone"), record
                        break
        assert "beta" not in fake.loaded_models()
        assert ctl.snapshot("b").cleanups == ()
        assert ctl.snapshot("b").state is SlotState.ERROR
        assert ctl.snapshot("b").error == snap.error
        holds(await ctl.load("c", "gamma"), "gamma")
    assert len(loads_of(fake, "beta")) == 1
    assert [r.status for r in unloads_of(fake, "beta")] == [200]


# -- error answers --------------------------------------------------------------------------


async def test_500_with_a_nested_error_object_from_load(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        fake.failing("beta", "model file /models/beta.gguf does not exist")  # no evict-all
        snap = await ctl.load("b", "beta")
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_FAILED,
            "loading 'beta' failed: POST /api/v1/load: HTTP 500: ",
            "Failed to load model 'beta': model file /models/beta.gguf does not exist",
            "(model_load_error)",
        )
        error = snap.error
        assert error is not None and (error.model, error.path) == ("beta", models["beta"].path)
        holds(ctl.snapshot("a"), "alpha")
        holds(await ctl.load("c", "gamma"), "gamma")
    assert len(loads_of(fake, "beta")) == 1
    assert fake.evict_all_count == 0
    assert fake.loaded_models() == ["alpha", "gamma"]


async def test_500_with_a_plain_string_error_from_unload(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        with fake.failing_unload("alpha", "backend process 24000 would not stop"):
            snap = await ctl.unload("a")
        failed(
            snap,
            SlotState.LOADED,
            PreloadError.UNLOAD_FAILED,
            "unloading 'alpha' failed: POST /api/v1/unload: HTTP 500: "
            "backend process 24000 would not stop",
        )
        assert snap.model == "alpha" and ctl.ledger.owner_of("alpha") == "a"
        assert fake.loaded_models() == ["alpha", "beta"]  # it is still there, and a says why
        holds(ctl.snapshot("b"), "beta")

        clean_idle(await ctl.unload("a"))  # an explicit unload tries again
        holds(await ctl.load("c", "gamma"), "gamma")
    assert [r.status for r in unloads_of(fake, "alpha")] == [500, 200]
    assert fake.loaded_models() == ["beta", "gamma"]
    assert len(fake.loads()) == 3


@pytest.mark.parametrize("api_key", [CLIENT_KEY, None], ids=["wrong-key", "no-key"])
async def test_401_and_the_key_is_shown_nowhere(
    models: dict[str, ModelEntry], caplog: pytest.LogCaptureFixture, api_key: str | None
) -> None:
    fake = FakeLemonade(
        [FakeModel.for_file(n, e.path) for n, e in models.items()], api_key=SERVER_KEY
    )
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    async with (
        loopback(fake) as server,
        controller(server.url, models, api_key=api_key) as ctl,
        ctl.transitions() as stream,
    ):
        snap = await ctl.load("a", "alpha")
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_FAILED,
            "loading 'alpha' failed: POST /api/v1/load: HTTP 401: Invalid or missing API key",
        )
        other = await ctl.load("b", "beta")  # the controller carries on, and tells the truth
        failed(other, SlotState.ERROR, PreloadError.LOAD_FAILED, "HTTP 401")
        clean_idle(await ctl.reset("a"))
        shown = [repr(ctl), str(ctl), repr(snap), repr(other), str(snap.error)]
        shown += [repr(s) for s in ctl.snapshots().values()]
        shown += [repr(s.error) for s in (snap, other)]
    shown += [repr(t) + str(t) async for t in stream]
    shown.append(caplog.text)
    shown += [record.getMessage() + repr(record.args) for record in caplog.records]
    assert len(shown) > 10 and "HTTP 401" in caplog.text
    assert any(r.name.startswith("httpcore") for r in caplog.records)  # DEBUG really captured
    everything = "\n".join(shown)
    for key in (SERVER_KEY, CLIENT_KEY):
        assert key not in everything
    assert [(r.route, r.authorized) for r in fake.requests if r.route == "load"] == [
        ("load", False),
        ("load", False),
    ]  # one each, never retried
    assert fake.loaded_models() == []


# -- bodies that are not what the server promises ------------------------------------------


@pytest.mark.parametrize(
    ("fault", "fact"),
    [
        (HealthFault.NOT_JSON, "HTTP 200: body is not JSON"),
        (HealthFault.WRONG_SHAPE, "no model list ('all_models_loaded' or 'loaded')"),
        (HealthFault.HUGE, f"HTTP 200: body larger than {DEFAULT_MAX_HEALTH_BYTES} bytes"),
    ],
    ids=["not-json", "wrong-shape", "huge"],  # huge: refused unread
)
async def test_a_bad_health_body_reaches_no_slot(
    fake: FakeLemonade,
    models: dict[str, ModelEntry],
    caplog: pytest.LogCaptureFixture,
    fault: HealthFault,
    fact: str,
) -> None:
    """Slots a and b hold models; the fault is on; nothing a poll reads reaches a slot."""
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        failures = ctl.idle_watcher.failures
        with fake.health_fault(fault):
            fake.evict_all()  # if the body were guessed at, a slot would now be told something
            with anyio.fail_after(PROMPTLY):
                assert await ctl.refresh() is None
                holds(await ctl.load("c", "gamma"), "gamma")  # its re-read fails, the load stands
            assert ctl.idle_watcher.failures == failures + 2
            logged = f"health poll failed, trying again next interval: GET /api/v1/health: {fact}"
            assert logged in caplog.text
            holds(ctl.snapshot("a"), "alpha")
            holds(ctl.snapshot("b"), "beta")
        # Off: the next good reading tells the truth.
        assert await ctl.refresh() is not None
        for slot, model in (("a", "alpha"), ("b", "beta")):
            failed(
                ctl.snapshot(slot), SlotState.IDLE, PreloadError.EVICTED, f"'{model}' was evicted"
            )
        holds(ctl.snapshot("c"), "gamma")
    assert fake.unloads() == []
    assert [r.body["model_name"] for r in fake.loads()] == ["alpha", "beta", "gamma"]


async def test_health_listing_a_model_with_a_non_string_name(
    fake: FakeLemonade, models: dict[str, ModelEntry], caplog: pytest.LogCaptureFixture
) -> None:
    """One bad row is left out and logged; the rest of the reading still tells the truth."""
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        with fake.health_fault(HealthFault.NAME_NOT_STRING):
            fake.evict_all()
            with anyio.fail_after(PROMPTLY):
                assert await ctl.refresh() is not None
        assert "model #0: 'model_name' is not a non-empty string" in caplog.text
        for slot, model in (("a", "alpha"), ("b", "beta")):
            failed(
                ctl.snapshot(slot), SlotState.IDLE, PreloadError.EVICTED, f"'{model}' was evicted"
            )
    assert fake.unloads() == []


# httpx leaves its inner iterators to the garbage collector when a streamed
# read is abandoned; trio reports that as a ResourceWarning.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_endless_health_body_is_read_bounded(
    models: dict[str, ModelEntry], caplog: pytest.LogCaptureFixture
) -> None:
    """A 200 with no Content-Length and a body that never ends: the read stops past the cap."""
    sent: list[int] = []
    cut_off = anyio.Event()

    async def endless(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    head += await stream.receive()
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
                sent.append(0)
                while True:
                    await stream.send(b" " * 65536)
                    sent[-1] += 65536
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                cut_off.set()

    async with raw_server(endless) as url, controller(url, models) as ctl:
        with anyio.fail_after(PROMPTLY):
            assert await ctl.refresh() is None
            await cut_off.wait()  # the client hung up on the endless body
        clean_idle(ctl.snapshot("a"))
    assert f"GET /api/v1/health: HTTP 200: body larger than {DEFAULT_MAX_HEALTH_BYTES} bytes" in (
        caplog.text
    )
    assert sent and max(sent) < 64 * 1024 * 1024  # bounded (the cap plus socket buffers)


async def test_health_listing_a_model_twice(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        fake.duplicate_rows()
        health = await ctl.refresh()
        assert health is not None
        assert [m.name for m in health.models] == ["alpha", "beta"]  # merged, one each
        holds(ctl.snapshot("a"), "alpha")
        holds(ctl.snapshot("b"), "beta")
        holds(await ctl.load("c", "gamma"), "gamma")  # the re-read is a duplicate too
        fake.restart()  # the doubled rows do not hide a real eviction
        assert await ctl.refresh() is not None
        for slot in ("a", "b", "c"):
            failed(
                ctl.snapshot(slot), SlotState.IDLE, PreloadError.EVICTED, "evicted by the server"
            )
    assert fake.unloads() == []
    assert len(fake.loads()) == 3


# -- the server drops models --------------------------------------------------------------


async def test_server_restarting_with_nothing_loaded(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        refused = await ctl.load("c", "corrupt")
        failed(refused, SlotState.ERROR, PreloadError.SHA256_MISMATCH)

        await server.stop()
        fake.restart()
        await server.start()
        health = await ctl.refresh()  # the next poll, now
        assert health is not None and health.names == frozenset()
        for slot, model in (("a", "alpha"), ("b", "beta")):
            failed(
                ctl.snapshot(slot),
                SlotState.IDLE,
                PreloadError.EVICTED,
                f"model '{model}' was evicted by the server (no longer listed by /health)",
            )
        assert ctl.snapshot("c") == refused  # a slot in error is left as it was
        assert len(fake.loads()) == 2  # nothing reloaded behind the caller's back
        holds(await ctl.load("c", "gamma"), "gamma")
    assert fake.loaded_models() == ["gamma"]


async def test_server_lru_evicts_a_slots_model(models: dict[str, ModelEntry]) -> None:
    catalog = [FakeModel.for_file(n, e.path) for n, e in models.items() if n != "delta"] + [
        FakeModel.for_file("delta", models["delta"].path, type="embedding")
    ]
    fake = FakeLemonade(catalog)  # the server's default: one model per type
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        # Known before load() returned: the re-read after every load.
        failed(
            ctl.snapshot("a"),
            SlotState.IDLE,
            PreloadError.EVICTED,
            "model 'alpha' was evicted by the server",
        )
        assert fake.loaded_models() == ["beta"]
        holds(await ctl.load("c", "delta"), "delta")  # another type: nobody evicted
        holds(ctl.snapshot("b"), "beta")
    assert [r.body["model_name"] for r in fake.loads()] == ["alpha", "beta", "delta"]
    assert fake.unloads() == []


async def test_evict_all_caused_by_a_failed_load_from_outside(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        fake.failing("gamma", "llama-server failed to start")
        async with httpx.AsyncClient(base_url=server.url) as someone_else:
            answer = await someone_else.post("/api/v1/load", json={"model_name": "gamma"})
        assert answer.status_code == 500
        assert fake.evict_all_count == 1 and fake.loaded_models() == []

        await ctl.refresh()  # what the next poll sees
        for slot, model in (("a", "alpha"), ("b", "beta")):
            failed(
                ctl.snapshot(slot), SlotState.IDLE, PreloadError.EVICTED, f"'{model}' was evicted"
            )
        clean_idle(ctl.snapshot("c"))
        assert [r.body["model_name"] for r in fake.loads()] == ["alpha", "beta", "gamma"]
        holds(await ctl.load("a", "alpha"), "alpha")  # a command brings it back, nothing else
    assert fake.loaded_models() == ["alpha"]


# -- the server acted, but its answer never arrived ---------------------------------------
# Both were bugs at commit 45448c8: the slot reported itself empty while the server
# still held a model on its behalf, and an explicit unload sent nothing (the slot had
# forgotten the model), so the model stayed on the server owned by no one.


async def test_load_answer_dropped_after_the_server_loaded_the_model(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    """A dropped connection after the load happened: the slot cannot know, so it must not forget."""
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        with fake.dropping_replies("beta"):  # the load happens; its answer never arrives
            snap = await ctl.load("b", "beta")
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_FAILED,
            "loading 'beta' failed: POST /api/v1/load: server unreachable",
            "Server disconnected without sending a response",
        )
        assert snap.model is None and snap.cleanups == ("beta",)  # a stray, owned by nobody
        assert fake.loaded_models() == ["alpha", "beta"]
        holds(ctl.snapshot("a"), "alpha")
        async with ctl.transitions() as stream:
            clean_idle(await ctl.unload("b"))  # ADR-0007 §3: an explicit unload cleans up...
            with anyio.fail_after(PROMPTLY):
                async for record in stream:
                    if record.reason.startswith("stray gone"):
                        assert (record.slot, record.model) == ("b", "beta"), record
                        break
        assert fake.loaded_models() == ["alpha"]  # ...and reaches the model the server holds
        assert ctl.snapshot("b").cleanups == ()
        holds(await ctl.load("c", "gamma"), "gamma")
    assert len(loads_of(fake, "beta")) == 1
    assert unloads_of(fake, "beta")[-1].status == 200


async def test_unload_answer_dropped_keeps_the_model_until_a_reading_says_it_is_gone(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    """The unload happened but its answer was lost: the slot keeps alpha until /health shows."""
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        with fake.dropping_replies("alpha"):  # the unload happens; its answer never arrives
            snap = await ctl.unload("a")
        failed(snap, SlotState.LOADED, PreloadError.UNLOAD_FAILED, "unloading 'alpha' failed")
        assert (snap.model, snap.cleanups) == ("alpha", ())
        assert ctl.ledger.owner_of("alpha") == "a"
        assert fake.loaded_models() == []
        assert await ctl.refresh() is not None  # the reading does not list it: gone
        snap = ctl.snapshot("a")
        failed(snap, SlotState.IDLE, PreloadError.EVICTED)
        assert snap.model is None and ctl.ledger.owner_of("alpha") is None
        assert await ctl.refresh() is not None  # at the latest one reading later: forgotten
        assert ctl.snapshot("a").cleanups == () and len(ctl.ledger) == 0
    assert [r.status for r in unloads_of(fake, "alpha")] == [None]  # sent once, no retry


async def test_swap_whose_unload_of_the_old_model_answers_500(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    """The old model cannot be unloaded: nothing is loaded over it, and the slot still owns it."""
    async with loopback(fake) as server, controller(server.url, models) as ctl:
        holds(await ctl.load("a", "alpha"), "alpha")
        holds(await ctl.load("b", "beta"), "beta")
        with fake.failing_unload("alpha", "backend process 24000 would not stop"):
            snap = await ctl.load("a", "gamma")
        failed(
            snap,
            SlotState.LOADED,
            PreloadError.UNLOAD_FAILED,
            "unloading 'alpha' before loading 'gamma' failed",
            "HTTP 500: backend process 24000 would not stop",
            "'gamma' was not sent, 'alpha' is kept",
        )
        assert snap.model == "alpha" and ctl.ledger.owner_of("alpha") == "a"
        assert loads_of(fake, "gamma") == []  # nothing loaded over it
        assert fake.loaded_models() == ["alpha", "beta"]
        holds(ctl.snapshot("b"), "beta")
        clean_idle(await ctl.unload("a"))  # the slot still owns alpha: an unload reaches it
        assert fake.loaded_models() == ["beta"]
        holds(await ctl.load("c", "gamma"), "gamma")
    assert unloads_of(fake, "alpha")[-1].status == 200
