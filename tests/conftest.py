"""Shared fixtures and profiles: every async test runs on both anyio backends.

Tests that need the real 120 s / 300 s defaults are marked
:data:`kit.virtual_time`, which runs them on trio with an autojumping
``MockClock`` (:func:`kit.virtual_clock`): minutes pass in milliseconds.

Hypothesis runs the "default" profile, derandomized, unless
``SLOTFSM_EXPLORE=1`` selects "explore" (random, more examples); see ``kit.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from kit import EXPLORE, EXPLORE_FACTOR, ControllerFactory, virtual_clock

from slotfsm import Controller, ModelEntry, SlotConfig
from slotfsm.testing import FakeLemonade, FakeModel
from slotfsm.testing.files import Flaw, write_model

settings.register_profile(
    "default",
    derandomize=True,  # the same examples every run; implies no example database
    deadline=None,
    print_blob=True,
    # Both depend on the machine, not on the code: a fixture per test, and timing.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    settings.get_profile("default"),
    derandomize=False,
    max_examples=100 * EXPLORE_FACTOR,
)
PROFILE = "explore" if EXPLORE else "default"
settings.load_profile(PROFILE)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "virtual_time: run on trio with a virtual clock")


def pytest_report_header(config: pytest.Config) -> str:
    return f"slotfsm: hypothesis profile {PROFILE!r}, storm seeds {'fresh' if EXPLORE else 'fixed'}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "anyio_backend" in metafunc.fixturenames:
        virtual = metafunc.definition.get_closest_marker("virtual_time") is not None
        backends = ["trio-virtual"] if virtual else ["asyncio", "trio"]
        metafunc.parametrize("anyio_backend", backends, indirect=True)


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "trio-virtual":
        return ("trio", {"clock": virtual_clock()})
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
    return FakeLemonade(
        [FakeModel.for_file(n, e.path) for n, e in models.items()], max_models={"llm": -1}
    )


@pytest.fixture
def make_controller(fake: FakeLemonade, models: dict[str, ModelEntry]) -> ControllerFactory:
    """Build a controller on the in-process fake: ``make_controller(SlotConfig(...), ...)``."""

    def build(*slots: SlotConfig, **options: Any) -> Controller:
        options.setdefault("transport", fake.transport())
        options.setdefault("lemonade_url", "http://lemonade")
        return Controller(registry=list(models.values()), slots=slots, **options)

    return build
