"""The optional state file: which model each slot holds, kept across restarts.

hal0 restarts while Lemonade keeps running.  A controller that forgot what its
slots held would never idle-unload those models.  The file is one small JSON
document, ``{"version": 1, "slots": {"chat": "qwen3-0.6b", ...}}``, written
atomically (a temporary file in the same directory, fsync, rename, fsync of
the directory), so a reader sees the old document or the new one, never half
of one.  A corrupt or unknown-version file is reported and ignored: it never
stops a controller from starting.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from slotfsm._atomic import write_atomically

__all__ = ["VERSION", "read_assignments", "write_assignments"]

logger = logging.getLogger("slotfsm")

VERSION = 1


def read_assignments(path: str | os.PathLike[str]) -> dict[str, str]:
    """The slot → model map recorded at ``path``; empty when missing or unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("state file %s unreadable, ignored: %s", path, exc)
        return {}
    try:
        document = json.loads(text)
    except ValueError as exc:
        logger.warning("state file %s is not JSON, ignored: %s", path, exc)
        return {}
    if not isinstance(document, dict) or document.get("version") != VERSION:
        version = document.get("version") if isinstance(document, dict) else None
        logger.warning("state file %s has unknown version %r, ignored", path, version)
        return {}
    slots = document.get("slots")
    if not isinstance(slots, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in slots.items()
    ):
        logger.warning("state file %s: 'slots' is not a map of names, ignored", path)
        return {}
    return dict(slots)


def write_assignments(path: str | os.PathLike[str], slots: Mapping[str, str]) -> None:
    """Replace the file at ``path`` with ``slots``, atomically and durably."""
    document = json.dumps({"version": VERSION, "slots": dict(sorted(slots.items()))}, indent=2)
    write_atomically(path, (document + "\n").encode("utf-8"))
