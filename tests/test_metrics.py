"""slotfsm.metrics: the Prometheus collector, and the extra it needs and nobody else imports."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from kit import ControllerFactory, virtual_time
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from slotfsm import Controller, PreloadError, SlotConfig, SlotState, SlotTransition
from slotfsm.metrics import SlotCollector
from slotfsm.testing import FakeLemonade, HealthFault

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of the exposition text, parsed back: ``(name, labels) -> value``."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_nothing_else_in_slotfsm_imports_prometheus_client() -> None:
    probe = (
        "import pkgutil, sys, slotfsm\n"
        "names = [m.name for m in pkgutil.walk_packages(slotfsm.__path__, 'slotfsm.')]\n"
        "assert 'slotfsm.metrics' in names\n"
        "for name in names:\n"
        "    if name not in ('slotfsm.metrics', 'slotfsm.__main__'):\n"
        "        __import__(name)\n"
        "print(len(names), sorted(m for m in sys.modules if m.startswith('prometheus')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    count, imported = done.stdout.split(maxsplit=1)
    assert int(count) > 20 and imported.strip() == "[]"


def test_the_metrics_module_names_its_extra_when_the_client_is_missing() -> None:
    requires = importlib.metadata.metadata("slotfsm").get_all("Requires-Dist") or []
    assert any(r.startswith("prometheus-client") and 'extra == "metrics"' in r for r in requires)
    code = "import sys\nsys.modules['prometheus_client'] = None\nimport slotfsm.metrics\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("ImportError: ") and "pip install 'slotfsm[metrics]'" in last


async def test_the_collector_counts_what_the_controller_did(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat"), SlotConfig("code")) as ctl:
        collector = SlotCollector(ctl)
        registry = CollectorRegistry()
        registry.register(collector)
        async with collector.running():
            assert (await ctl.load("chat", "alpha")).state is SlotState.LOADED
            assert (await ctl.load("code", "corrupt")).state is SlotState.ERROR
            await ctl.unload("chat")
            with fake.health_fault(HealthFault.SERVER_ERROR):
                assert await ctl.refresh() is None
        # Leaving running() counted every record published until then.
        samples = scrape(registry)
        states = {
            (slot, state.value): value(samples, "slotfsm_slot_state", slot=slot, state=state.value)
            for slot in ("chat", "code")
            for state in SlotState
        }
        assert {key for key, v in states.items() if v == 1.0} == {
            ("chat", "idle"),
            ("code", "error"),
        }
        assert set(states.values()) == {0.0, 1.0}
        assert value(samples, "slotfsm_loads_total", slot="chat") == 1
        assert value(samples, "slotfsm_loads_total", slot="code") is None  # nothing was sent
        assert value(samples, "slotfsm_unloads_total", slot="chat") == 1
        assert value(samples, "slotfsm_failures_total", slot="code", kind="sha256_mismatch") == 1
        assert [k for k in samples if k[0] == "slotfsm_failures_total"] == [
            ("slotfsm_failures_total", frozenset({("slot", "code"), ("kind", "sha256_mismatch")}))
        ]
        for histogram in ("slotfsm_validation_seconds", "slotfsm_load_seconds"):
            assert value(samples, f"{histogram}_count", slot="chat") == 1
            assert value(samples, f"{histogram}_bucket", slot="chat", le="+Inf") == 1
            assert value(samples, f"{histogram}_count", slot="code") is None
        watcher = ctl.idle_watcher
        assert value(samples, "slotfsm_health_polls_total") == watcher.polls >= 3
        assert value(samples, "slotfsm_health_poll_failures_total") == watcher.failures == 1
        assert value(samples, "slotfsm_pending_cleanups") == 0
        assert value(samples, "slotfsm_transitions_missed_total") == 0


@virtual_time
async def test_a_timed_out_load_is_a_failure_and_a_pending_cleanup(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(SlotConfig("chat", load_timeout=5)) as ctl:
        collector = SlotCollector(ctl)
        registry = CollectorRegistry()
        registry.register(collector)
        hang = fake.hanging("alpha")
        async with collector.running():
            snap = await ctl.load("chat", "alpha")
        assert snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT
        samples = scrape(registry)
        assert value(samples, "slotfsm_failures_total", slot="chat", kind="load_timeout") == 1
        assert value(samples, "slotfsm_loads_total", slot="chat") == 1
        assert value(samples, "slotfsm_load_seconds_count", slot="chat") is None
        assert ctl.ledger.owed() == ("alpha",)
        assert value(samples, "slotfsm_pending_cleanups") == 1
        hang.off()


async def test_records_gone_from_the_ring_are_counted_as_missed(
    make_controller: ControllerFactory,
) -> None:
    async with make_controller(SlotConfig("chat"), transition_ring=2) as ctl:
        await ctl.load("chat", "alpha")
        await ctl.unload("chat")  # five records: the ring keeps the last two
        collector = SlotCollector(ctl)
        registry = CollectorRegistry()
        registry.register(collector)
        async with collector.running():
            pass
        samples = scrape(registry)
        assert value(samples, "slotfsm_transitions_missed_total") == 3
        assert value(samples, "slotfsm_unloads_total", slot="chat") == 1  # still in the ring
        assert value(samples, "slotfsm_loads_total", slot="chat") is None  # gone before


def record(source: SlotState, dest: SlotState, trigger: str, at: float) -> SlotTransition:
    return SlotTransition("chat", source, dest, trigger, at)


@pytest.mark.parametrize(
    ("validating", "loading", "validation_le", "load_le"),
    [(2.5, 6.5, "2.5", "10.0"), (0.01, 0.05, "0.05", "0.05"), (400.0, 1.0, "+Inf", "1.0")],
)
def test_durations_fall_in_their_buckets(
    validating: float, loading: float, validation_le: str, load_le: str
) -> None:
    collector = SlotCollector(Controller(lemonade_url="http://lemonade", registry=[]))
    registry = CollectorRegistry()
    registry.register(collector)
    start = 100.0
    steps = [
        record(SlotState.IDLE, SlotState.VALIDATING, "load", start),
        record(SlotState.VALIDATING, SlotState.LOADING, "validated", start + validating),
        record(SlotState.LOADING, SlotState.LOADED, "load_succeeded", start + validating + loading),
        # A failed swap back to the kept model is no load duration.
        record(SlotState.LOADED, SlotState.VALIDATING, "load", 1000.0),
        record(SlotState.VALIDATING, SlotState.LOADING, "validated", 1000.0 + validating),
        record(SlotState.LOADING, SlotState.LOADED, "load_failed", 2000.0),
    ]
    for step in steps:
        collector.count(step)
    samples = scrape(registry)
    for name, seconds, le, observed in (
        ("slotfsm_validation_seconds", validating, validation_le, 2),
        ("slotfsm_load_seconds", loading, load_le, 1),
    ):
        assert value(samples, f"{name}_count", slot="chat") == observed
        assert value(samples, f"{name}_sum", slot="chat") == pytest.approx(seconds * observed)
        buckets = {
            dict(labels)["le"]: v
            for (n, labels), v in samples.items()
            if n == f"{name}_bucket" and dict(labels)["slot"] == "chat"
        }
        below = [le_ for le_, v in buckets.items() if v == 0]
        assert buckets[le] == observed and all(float(b) < seconds for b in below)
        assert min(float(b) for b, v in buckets.items() if v == observed) == float(le)
    assert value(samples, "slotfsm_loads_total", slot="chat") == 2
    assert value(samples, "slotfsm_slot_state", slot="chat", state="loaded") is None  # not running
