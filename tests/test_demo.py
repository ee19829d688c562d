"""``slotfsm demo`` tells its story, and says so only when it went as designed."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from slotfsm.demo import run_demo

pytestmark = pytest.mark.anyio


async def test_the_story_goes_as_designed() -> None:
    out = io.StringIO()
    diverged = await run_demo(out)
    text = out.getvalue()
    assert diverged == [], text
    assert "the story went as designed" in text
    assert " FAIL " not in text and "\x1b[" not in text  # no colour off a terminal
    for phrase in (
        "SHA256_MISMATCH",
        "SIZE_MISMATCH",
        "LOAD_TIMEOUT",
        "idle expired, not in use",
        "EVICTED",
        "/load per model:",
    ):
        assert phrase in text
    # Every transition is printed, the last one too, before the summary.
    last_chapter = text[text.index("== 5.") : text.index("== slots")]
    assert "spare  loading -> error" in last_chapter and "LOAD_FAILED" in last_chapter


def test_the_command_line_runs_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "slotfsm", "demo"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the story went as designed" in done.stdout
