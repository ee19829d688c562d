"""What the tests share besides fixtures: the virtual clock, the explore switch, seeds.

Fixtures and hooks live in ``conftest.py``; a test imports plain values and
helpers from here (and request-log checks from ``checks.py``).

By default every run is deterministic: Hypothesis is derandomized and every
random program runs from :data:`FIXED_SEED`.  ``SLOTFSM_EXPLORE=1`` turns the
exploration on: fresh seeds, ten times the Hypothesis examples, and the seed
of a failed program in its report.  ``SLOTFSM_STORM_SEED=N`` repeats one.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio.testing

from slotfsm import Controller, ModelEntry, SlotConfig
from slotfsm.testing import FakeLemonade

EXPLORE = os.environ.get("SLOTFSM_EXPLORE", "").strip() == "1"
"""``SLOTFSM_EXPLORE=1``: explore with fresh seeds and more examples."""

EXPLORE_FACTOR = 10
"""How many times more Hypothesis examples a test runs when exploring."""

FIXED_SEED = 1
"""The seed of every random program in a default (deterministic) run."""

AUTOJUMP_AFTER = 0.005
"""Real seconds of quiet after which the virtual clock jumps to the next deadline."""

virtual_time = pytest.mark.virtual_time
"""Run an async test once, on trio, on a fresh autojumping ``MockClock``."""

ControllerFactory = Callable[..., Controller]
"""The ``make_controller`` fixture: ``make_controller(SlotConfig(...), **options)``."""


def examples(count: int) -> int:
    """A test's Hypothesis budget: ``count``, or :data:`EXPLORE_FACTOR` times it when exploring."""
    return count * EXPLORE_FACTOR if EXPLORE else count


def storm_seed() -> int:
    """``SLOTFSM_STORM_SEED`` if set; else a fresh seed when exploring, else :data:`FIXED_SEED`."""
    text = os.environ.get("SLOTFSM_STORM_SEED", "").strip()
    if text:
        return int(text)
    return random.SystemRandom().randrange(2**32) if EXPLORE else FIXED_SEED


def virtual_clock() -> trio.testing.MockClock:
    """A trio clock that jumps ahead whenever every task has waited :data:`AUTOJUMP_AFTER`.

    Not zero: pre-load hashing runs in a worker thread, and a clock that jumped
    while a thread worked would let minutes pass during a hash that takes a
    millisecond.
    """
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_AFTER)


@asynccontextmanager
async def served_controller(
    fake: FakeLemonade, registry: Iterable[ModelEntry], *slots: SlotConfig, **options: Any
) -> AsyncIterator[Controller]:
    """A running Controller talking to ``fake`` served on a real loopback socket."""
    async with (
        fake.serve() as url,
        Controller(lemonade_url=url, registry=list(registry), slots=slots, **options) as ctl,
    ):
        yield ctl
