"""Assertions shared by the fault tests: what the request log and the snapshots must say."""

from __future__ import annotations

from typing import Any

from slotfsm import PreloadError, SlotSnapshot, SlotState
from slotfsm.testing import FakeLemonade


def loads_of(fake: FakeLemonade, model: str) -> list[Any]:
    """The ``/load`` requests the fake received for ``model``."""
    return [r for r in fake.loads() if isinstance(r.body, dict) and r.body["model_name"] == model]


def unloads_of(fake: FakeLemonade, model: str) -> list[Any]:
    """The ``/unload`` requests the fake received for ``model``."""
    return [r for r in fake.unloads() if isinstance(r.body, dict) and r.body["model_name"] == model]


def failed(snap: SlotSnapshot, state: SlotState, kind: PreloadError, *facts: str) -> None:
    """``snap`` is in ``state`` with a failure of ``kind`` whose message says every fact."""
    assert snap.state is state, snap
    assert snap.error is not None, snap
    assert snap.error.kind is kind, snap.error
    for fact in facts:
        assert fact in snap.error.message, (fact, snap.error.message)


def holds(snap: SlotSnapshot, model: str) -> None:
    """``snap`` is ``loaded`` with ``model`` and no failure."""
    assert (snap.state, snap.model, snap.error) == (SlotState.LOADED, model, None), snap
