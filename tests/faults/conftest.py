"""Fixtures of the fault tests: the validation spy and the seed of a storm."""

from __future__ import annotations

from collections.abc import Iterator

import kit
import pytest

import slotfsm.controller
from faults.storm import Ticker, ValidationSpy


@pytest.fixture
def validation_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ValidationSpy]:
    """Every controller's validations go through this spy for the test's duration."""
    spy = ValidationSpy(slotfsm.controller.validate, slotfsm.controller.validate_cached, Ticker())
    monkeypatch.setattr(slotfsm.controller, "validate", spy)
    monkeypatch.setattr(slotfsm.controller, "validate_cached", spy.cached)
    yield spy


@pytest.fixture
def storm_seed(request: pytest.FixtureRequest) -> int:
    """The seed of the test's random program; a failed test's report says how to repeat it."""
    seed = kit.storm_seed()
    request.node.add_report_section(
        "setup", "seed", f"storm seed {seed}: SLOTFSM_STORM_SEED={seed} repeats this program"
    )
    return seed
