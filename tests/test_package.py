"""The package as users meet it: its public names, its cost, its promises about imports."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import slotfsm

PACKAGE = Path(slotfsm.__file__).parent


def imported_by(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules that running ``code`` in a fresh interpreter imports beyond its start-up."""
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "print('\\nimported:', *sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    last = done.stdout.splitlines()[-1]
    assert last.startswith("imported:"), done.stdout + done.stderr
    return set(last.split()[1:])


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


def test_importing_the_package_imports_nothing_else() -> None:
    assert imported_by("import slotfsm") == {"slotfsm"}


def test_help_and_version_import_no_library_machinery() -> None:
    """The command line's start-up: argparse, and nothing of what the commands use."""
    heavy = {"anyio", "attrs", "httpx", "logging", "shutil", "tomllib", "transitions", "typing"}
    heavy -= imported_by("import argparse")  # what this Python's argparse needs anyway
    for argv in (["--help"], ["--version"], ["validate", "--help"]):
        imported = imported_by(f"from slotfsm.cli import main\nmain({argv!r})")
        assert "slotfsm.cli" in imported
        assert imported & heavy == set(), argv


def test_validate_imports_neither_anyio_nor_httpx(tmp_path: Path) -> None:
    data = b"GGUF" + bytes(60)
    model = tmp_path / "m.gguf"
    model.write_bytes(data)
    argv = ["validate", str(model), "--sha256", hashlib.sha256(data).hexdigest()]
    argv += ["--size", str(len(data))]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    imported = imported_by(f"from slotfsm.cli import main\nassert main({argv!r}) == 0", env)
    assert {"slotfsm.preload", "slotfsm.registry", "hashlib"} <= imported
    assert imported & {"anyio", "httpx", "tomllib", "transitions", "hypothesis"} == set()


def test_the_version_has_one_source() -> None:
    """The installed metadata and ``slotfsm --version`` both say ``slotfsm.__version__``."""
    assert importlib.metadata.version("slotfsm") == slotfsm.__version__, (
        "the installed metadata is stale: reinstall (pip install -e .)"
    )
    done = subprocess.run(
        [sys.executable, "-m", "slotfsm", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout == f"slotfsm {slotfsm.__version__}\n"


def test_the_testing_kit_names_its_extra_when_hypothesis_is_missing() -> None:
    requires = importlib.metadata.metadata("slotfsm").get_all("Requires-Dist") or []
    assert any(r.startswith("hypothesis") and 'extra == "testing"' in r for r in requires)
    without_hypothesis = "import sys\nsys.modules['hypothesis'] = None\n"
    # The parts that need only the core dependencies import without it ...
    kit = imported_by(without_hypothesis + "import slotfsm.testing, slotfsm.testing.files")
    assert "slotfsm.testing.fake_lemonade" in kit
    # ... and the strategies say what to install.
    done = subprocess.run(
        [sys.executable, "-c", without_hypothesis + "import slotfsm.testing.strategies"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("ImportError: ") and "pip install 'slotfsm[testing]'" in last


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
