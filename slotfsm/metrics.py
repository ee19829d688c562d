"""Prometheus metrics for one controller: :class:`SlotCollector`, a custom collector.

Needs the standard Prometheus client library, which the ``metrics`` extra
installs (``pip install 'slotfsm[metrics]'``); nothing else in slotfsm imports
it.  The application registers the collector on its own registry and runs it
beside the controller::

    from prometheus_client import CollectorRegistry, generate_latest
    from slotfsm.metrics import SlotCollector

    async with Controller(...) as ctl:
        collector = SlotCollector(ctl)
        registry = CollectorRegistry()
        registry.register(collector)
        async with collector.running():  # counts the transition stream in a background task
            ...  # an async handler answers /metrics with generate_latest(registry)

What it exposes (``slot`` labels name the slot):

* ``slotfsm_slot_state{slot,state}`` (gauge): 1 for the state a slot is in, 0 for the others;
* ``slotfsm_loads_total{slot}``, ``slotfsm_unloads_total{slot}`` (counters): ``/load`` and
  ``/unload`` requests sent (entries into ``loading`` and ``unloading``);
* ``slotfsm_failures_total{slot,kind}`` (counter): failures reported, by stable kind code;
* ``slotfsm_validation_seconds{slot}`` (histogram): ``validating`` to ``loading``, for the
  validations that passed;
* ``slotfsm_load_seconds{slot}`` (histogram): ``loading`` to ``loaded``, for the loads the
  server answered;
* ``slotfsm_health_polls_total`` and ``slotfsm_health_poll_failures_total`` (counters):
  ``/health`` requests sent, and those that gave nothing usable;
* ``slotfsm_pending_cleanups`` (gauge): models owed a clean-up (``len(ctl.ledger.owed())``);
* ``slotfsm_transitions_missed_total`` (counter): records the counters never saw (below).

The slot states, health-poll counters and pending clean-ups are read from the
controller at each scrape.  Loads, unloads, failures and durations are
counted from ``ctl.transitions(since=0)`` by :meth:`SlotCollector.running`,
so they cover the controller's life as far back as its replay ring reaches;
what the ring no longer held, or what the collector fell behind on, is counted
in ``slotfsm_transitions_missed_total`` rather than lost silently.  Durations
are measured on slotfsm's monotonic clock, between the two records.  Bytes
hashed are not exposed: validation reports its verdict, not how much it read.

A scrape reads the controller directly, so :meth:`SlotCollector.collect` is
called from the controller's event loop: ``generate_latest(registry)`` in an
async handler, or ``prometheus_client.make_asgi_app(registry)`` mounted in an
ASGI application; not ``start_http_server``, whose scrapes run in a thread.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio

try:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:
    raise ImportError(
        "slotfsm.metrics needs prometheus-client, which the 'metrics' extra installs: "
        "pip install 'slotfsm[metrics]'",
        name=exc.name,
    ) from exc

from slotfsm.controller import Controller
from slotfsm.errors import SlotfsmError
from slotfsm.events import Trigger
from slotfsm.snapshot import Gap, SlotTransition
from slotfsm.states import SlotState
from slotfsm.stream import TransitionStream

__all__ = ["DEFAULT_BUCKETS", "SlotCollector"]

DEFAULT_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Histogram bounds in seconds: a cached fingerprint check to a load at its 120 s deadline."""


class _Histogram:
    """Counts per bucket and the sum, kept the way the exposition format wants them."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last."""
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts[:-1], strict=True):
            total += count
            cumulative.append((repr(bound), total))
        cumulative.append(("+Inf", total + self.counts[-1]))
        return cumulative


class SlotCollector:
    """A Prometheus collector for ``ctl`` (see the module docstring for the series).

    Register it on a ``CollectorRegistry``; run :meth:`running` while the
    controller runs so that the counters and durations move.  ``buckets`` are
    the histograms' upper bounds in seconds.  Scrape from the controller's
    event loop.
    """

    def __init__(self, ctl: Controller, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self._ctl = ctl
        self._bounds = tuple(sorted(float(b) for b in buckets))
        self._loads: Counter[str] = Counter()
        self._unloads: Counter[str] = Counter()
        self._failures: Counter[tuple[str, str]] = Counter()
        self._validation: defaultdict[str, _Histogram] = defaultdict(self._histogram)
        self._load: defaultdict[str, _Histogram] = defaultdict(self._histogram)
        self._entered: dict[str, float] = {}  # slot -> when it entered validating or loading
        self.missed = 0
        """Records the counters never saw (gone from the ring, or fallen behind on)."""

    @contextlib.asynccontextmanager
    async def running(self, buffer: int = 4096) -> AsyncIterator[SlotCollector]:
        """Count the controller's transition stream in a background task while inside.

        The controller must be running.  The stream is read from id 0, so the
        records still in the controller's ring are counted too.  Leaving stops
        the counting (the values stay, and scrapes go on answering).
        """
        stream = self._ctl.transitions(buffer, since=0)
        async with anyio.create_task_group() as group:
            group.start_soon(self._count_all, stream)
            try:
                yield self
            finally:
                stream.close()

    async def _count_all(self, stream: TransitionStream[SlotTransition | Gap]) -> None:
        async for item in stream:
            if isinstance(item, Gap):
                self.missed += item.missed
                self._entered.clear()  # a duration across a gap would be a guess
            else:
                self.count(item)

    def count(self, record: SlotTransition) -> None:
        """Count one record (what :meth:`running` does for each record of the stream)."""
        slot = record.slot
        if record.failure is not None:
            self._failures[slot, record.failure.kind.code] += 1
        if record.source is record.dest:
            return
        if record.dest is SlotState.LOADING:
            self._loads[slot] += 1
        elif record.dest is SlotState.UNLOADING:
            self._unloads[slot] += 1
        entered = self._entered.pop(slot, None)
        if entered is not None:
            if record.source is SlotState.VALIDATING and record.dest is SlotState.LOADING:
                self._validation[slot].observe(record.at - entered)
            elif (
                record.source is SlotState.LOADING
                and record.dest is SlotState.LOADED
                and record.trigger == Trigger.LOAD_SUCCEEDED
            ):
                self._load[slot].observe(record.at - entered)
        if record.dest in (SlotState.VALIDATING, SlotState.LOADING):
            self._entered[slot] = record.at

    def _histogram(self) -> _Histogram:
        return _Histogram(self._bounds)

    # -- the Collector protocol ----------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every family with its samples, read now (from the controller's event loop)."""
        try:
            snapshots = self._ctl.snapshots()
        except SlotfsmError:  # not running (yet, or any more): no slot states to show
            snapshots = {}
        state = GaugeMetricFamily(
            "slotfsm_slot_state",
            "1 for the state each slot is in, 0 for the others",
            labels=["slot", "state"],
        )
        for name, snap in snapshots.items():
            for value in SlotState:
                state.add_metric([name, value.value], 1.0 if snap.state is value else 0.0)
        yield state
        for metric, doc, counts in (
            ("slotfsm_loads_total", "/load requests sent (entries into loading)", self._loads),
            (
                "slotfsm_unloads_total",
                "/unload requests sent (entries into unloading)",
                self._unloads,
            ),
        ):
            family = CounterMetricFamily(metric, doc, labels=["slot"])
            for slot, count in sorted(counts.items()):
                family.add_metric([slot], count)
            yield family
        failures = CounterMetricFamily(
            "slotfsm_failures_total", "failures reported, by kind", labels=["slot", "kind"]
        )
        for (slot, kind), count in sorted(self._failures.items()):
            failures.add_metric([slot, kind], count)
        yield failures
        for metric, doc, table in (
            ("slotfsm_validation_seconds", "validating to loading (passed)", self._validation),
            ("slotfsm_load_seconds", "loading to loaded (answered)", self._load),
        ):
            histogram = HistogramMetricFamily(metric, doc, labels=["slot"])
            for slot, values in sorted(table.items()):
                histogram.add_metric([slot], values.buckets(), values.sum)
            yield histogram
        watcher = self._ctl.idle_watcher
        yield CounterMetricFamily(
            "slotfsm_health_polls_total", "/health requests sent", value=watcher.polls
        )
        yield CounterMetricFamily(
            "slotfsm_health_poll_failures_total",
            "/health requests that gave nothing usable",
            value=watcher.failures,
        )
        yield GaugeMetricFamily(
            "slotfsm_pending_cleanups",
            "models the server may hold because of us that no slot owns",
            value=len(self._ctl.ledger.owed()),
        )
        yield CounterMetricFamily(
            "slotfsm_transitions_missed_total",
            "transition records the counters never saw",
            value=self.missed,
        )
