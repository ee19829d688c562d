"""The package as users meet it: its public names, its cost, its promises about imports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import slotfsm

PACKAGE = Path(slotfsm.__file__).parent


def test_every_public_name_resolves_and_the_contract_is_there() -> None:
    for name in slotfsm.__all__:
        assert getattr(slotfsm, name) is not None
    for name in ("Controller", "ModelEntry", "PreloadError", "Registry", "SlotConfig", "SlotState"):
        assert name in slotfsm.__all__
    assert [s.value for s in slotfsm.SlotState] == [
        "idle",
        "validating",
        "loading",
        "loaded",
        "unloading",
        "error",
    ]
    assert {
        "FILE_MISSING",
        "NOT_A_FILE",
        "UNREADABLE",
        "SIZE_MISMATCH",
        "BAD_MAGIC",
        "SHA256_MISMATCH",
        "LOAD_TIMEOUT",
    } <= set(slotfsm.PreloadError.__members__)


def test_importing_the_package_is_cheap() -> None:
    """Nothing heavy (httpx, transitions, anyio) is imported until it is used."""
    heavy = "('httpx', 'transitions', 'anyio')"
    code = f"import sys, slotfsm; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_library_code_uses_anyio_never_asyncio() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(import asyncio|from asyncio)", path.read_text(), re.M)
    ]
    assert offenders == []


def test_library_code_uses_no_test_primitives() -> None:
    """Only the testing kit may wait for "all tasks blocked"; product code waits on events."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "testing" not in path.relative_to(PACKAGE).parts
        and "wait_all_tasks_blocked" in path.read_text()
    ]
    assert offenders == []


def test_typed_marker_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()
