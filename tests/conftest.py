"""Shared fixtures: every async test runs on both anyio backends.

Tests that need the real 120 s / 300 s defaults override ``anyio_backend``
with :func:`virtual_time`, which runs them on trio with a ``MockClock`` that
jumps ahead whenever every task has been waiting for a few real milliseconds:
minutes pass in milliseconds.  (Not zero: pre-load hashing runs in a worker
thread, and a clock that jumped while a thread worked would let minutes pass
during a hash that takes a millisecond.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio.testing
from hypothesis import HealthCheck, settings

from slotfsm import Controller, ModelEntry, SlotConfig
from slotfsm.testing import FakeLemonade, FakeModel
from slotfsm.testing.files import Flaw, write_model

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("default")


AUTOJUMP_AFTER = 0.005
"""Real seconds of quiet after which the virtual clock jumps to the next deadline."""

virtual_time = pytest.mark.virtual_time
"""Run an async test once, on trio, on a fresh autojumping ``MockClock``."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "virtual_time: run on trio with a virtual clock")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "anyio_backend" in metafunc.fixturenames:
        virtual = metafunc.definition.get_closest_marker("virtual_time") is not None
        backends = ["trio-virtual"] if virtual else ["asyncio", "trio"]
        metafunc.parametrize("anyio_backend", backends, indirect=True)


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "trio-virtual":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=AUTOJUMP_AFTER)})
    return request.param


SOUND = ("alpha", "beta", "gamma", "delta")


@pytest.fixture
def models(tmp_path: Path) -> dict[str, ModelEntry]:
    """Sound model files plus one of each flaw, by name."""
    entries = {name: write_model(tmp_path, name) for name in SOUND}
    entries["corrupt"] = write_model(tmp_path, "corrupt", flaw=Flaw.SHA256)
    entries["truncated"] = write_model(tmp_path, "truncated", flaw=Flaw.TRUNCATED)
    entries["missing"] = write_model(tmp_path, "missing", flaw=Flaw.MISSING)
    return entries


@pytest.fixture
def fake(models: dict[str, ModelEntry]) -> FakeLemonade:
    """A fake server that knows every model and keeps any number of them loaded."""
    return FakeLemonade([FakeModel(name) for name in models], max_models={"llm": -1})


ControllerFactory = Callable[..., Controller]


@pytest.fixture
def make_controller(fake: FakeLemonade, models: dict[str, ModelEntry]) -> ControllerFactory:
    """Build a controller on the in-process fake: ``make_controller(SlotConfig(...), ...)``."""

    def build(*slots: SlotConfig, **options: Any) -> Controller:
        options.setdefault("transport", fake.transport())
        options.setdefault("lemonade_url", "http://lemonade")
        return Controller(registry=list(models.values()), slots=slots, **options)

    return build
