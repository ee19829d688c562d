"""A bounded soak: 50 slots, random traffic with faults, invariants after every batch.

Not in the default run (``-m 'not soak'``); run it with::

    .venv/bin/pytest -m soak -s

It runs for ``SLOTFSM_SOAK_SECONDS`` of wall time (default 120) against the
in-process fake on a virtual clock, one batch of commands after another, and
after each batch checks every promise the storm checks (``storm.py``).
It reports the memory traced by ``tracemalloc`` after each batch: the goal is
flat, i.e. the last quarter of the run uses no more than the first.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import statistics
import time
import tracemalloc
from pathlib import Path

import anyio
import pytest
from kit import virtual_time

from faults.storm import Storm, StormSettings, ValidationSpy, World

pytestmark = [pytest.mark.anyio, pytest.mark.soak]

SECONDS = float(os.environ.get("SLOTFSM_SOAK_SECONDS", "120"))
BATCH = 500
"""Commands per batch; the invariants are checked after each."""
WARM_UP = 2
"""Batches left out of the comparison: each slot's history (32 records) fills up first."""
FLAT_BYTES_PER_1000 = 32 * 1024
"""The most traced memory may grow per 1,000 commands and still count as flat.

Bounded structures fill slowly: the fingerprint cache (at most 1,024 entries,
one per sound file state, and the storm keeps rewriting files) and the failure
messages kept in each slot's history.  A leak of even one small object per
command (64 bytes or more), request or transition would exceed this.
"""

KiB = 1024


class ErrorCount(logging.Handler):
    """Counts the error records it sees, and keeps the first few."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 5:
            self.first.append(self.format(record))


@virtual_time
async def test_soak_50_slots_with_faults_keeps_every_promise_in_flat_memory(
    tmp_path: Path, validation_spy: ValidationSpy, storm_seed: int
) -> None:
    settings = StormSettings(slots=50, callers=50, commands=BATCH)
    world = World(tmp_path, settings, random.Random(storm_seed))
    storm = Storm(world, validation_spy, storm_seed)
    print(f"\nsoak: seed {storm_seed}, {SECONDS:g} s of wall time, 50 slots, batches of {BATCH}")

    samples: list[tuple[int, int]] = []  # (commands so far, traced bytes) after each batch
    started = time.monotonic()
    virtual = anyio.current_time()
    # Every transition is logged; the test harness would keep each record in memory.
    # Only errors (a defect in slotfsm's own work) are kept, and counted.
    errors = ErrorCount()
    slotfsm_log = logging.getLogger("slotfsm")
    level = slotfsm_log.level
    slotfsm_log.setLevel(logging.ERROR)
    slotfsm_log.addHandler(errors)
    tracemalloc.start()
    try:
        async with storm.controller() as ctl:
            while time.monotonic() - started < SECONDS and not storm.problems:
                await storm.batch(ctl, BATCH)
                gc.collect()
                samples.append((storm.commands, tracemalloc.get_traced_memory()[0]))
        final, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        slotfsm_log.removeHandler(errors)
        slotfsm_log.setLevel(level)
    wall = time.monotonic() - started

    measured = samples[WARM_UP:]
    quarter = max(1, len(measured) // 4)
    first, last = measured[:quarter], measured[-quarter:]
    first_mean = statistics.fmean(m for _, m in first)
    last_mean = statistics.fmean(m for _, m in last)
    span = statistics.fmean(c for c, _ in last) - statistics.fmean(c for c, _ in first)
    growth = (last_mean - first_mean) / (span / 1000) if span else 0.0
    print(
        f"soak: {storm.commands} commands in {len(samples)} batches, {wall:.0f} s wall,"
        f" {anyio.current_time() - virtual:.0f} s virtual\n"
        f"soak: events: {storm.requests} requests to the server ({storm.loads_sent} /load),"
        f" {storm.transitions} slot transitions, {world.fake.evict_all_count} evict-alls,"
        f" faults injected {sum(world.injected.values())} {dict(sorted(world.injected.items()))}\n"
        f"soak: outcomes {dict(sorted(storm.outcomes.items()))}\n"
        f"soak: {storm.report()}\n"
        f"soak: traced memory: first quarter {first_mean / KiB:.0f} KiB,"
        f" last quarter {last_mean / KiB:.0f} KiB, final {final / KiB:.0f} KiB,"
        f" peak {peak / KiB:.0f} KiB; growth {growth:+.0f} bytes per 1,000 commands\n"
        f"soak: traced KiB after each batch: {' '.join(str(m // KiB) for _, m in samples)}\n"
        f"soak: invariants broken: {len(storm.problems)}; errors logged: {errors.count}"
    )
    assert not storm.problems, storm.report() + "\n" + "\n".join(storm.problems)
    assert errors.count == 0, errors.first
    assert len(measured) >= 4, "too short to tell whether memory is flat"
    assert growth < FLAT_BYTES_PER_1000, f"memory grows {growth:.0f} bytes per 1,000 commands"
