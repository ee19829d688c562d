"""The optional state file: what the server may hold because of us, kept across restarts.

hal0 restarts while Lemonade keeps running.  A controller that forgot what its
slots held would never idle-unload those models, and one that forgot a load
still in flight would leak its late arrival.  The file records the residency
ledger (:mod:`slotfsm.ledger`) as one small JSON document::

    {"version": 2,
     "models": {"qwen3-0.6b": {"owner": "chat", "phase": "held"},
                "gemma-3":    {"origin": "code", "arrivals": 1, "stray": false}}}

It is written atomically (a temporary file in the same folder, fsync, rename,
fsync of the folder), so a reader sees the old document or the new one, never
half of one.  Version 1 files (``{"slots": {slot: model}}``) are still read.

A corrupt file (not UTF-8, not JSON, absurdly nested, an unknown version or
shape) is reported and ignored: it never stops a controller from starting.
Two things do, at once and with a :class:`~slotfsm.errors.ConfigError`: a
path that is not a regular file (a FIFO would hang the start), and a file that
another running controller holds (an advisory lock beside it, ``PATH.lock``):
two controllers never erase each other's records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import attrs

from slotfsm._atomic import write_atomically
from slotfsm.errors import ConfigError

__all__ = ["VERSION", "Record", "StateLock", "read_state", "write_state"]

logger = logging.getLogger("slotfsm")

VERSION = 2


@attrs.frozen
class Record:
    """What the file says about one model name."""

    name: str
    owner: str | None = None
    phase: str | None = None
    origin: str | None = None
    arrivals: int = 0
    stray: bool = False


def check_path(path: str | os.PathLike[str]) -> None:
    """Refuse a state path that exists but is not a regular file."""
    try:
        st = os.stat(path)
    except OSError:  # missing, or a path that cannot be written: the writes will say so
        return
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"state file {os.fspath(path)!r} exists and is not a regular file")


def read_state(path: str | os.PathLike[str]) -> dict[str, Record]:
    """The records at ``path`` by model name; empty when missing or unusable."""
    check_path(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("state file %s unreadable, ignored: %s", path, exc)
        return {}
    try:
        document = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        logger.warning("state file %s is not UTF-8 JSON, ignored: %s", path, exc)
        return {}
    version = document.get("version") if isinstance(document, dict) else None
    try:
        if version == 1:
            return _from_version_1(document["slots"])
        if version == VERSION:
            return _from_version_2(document["models"])
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("state file %s has an unexpected shape, ignored: %s", path, exc)
        return {}
    logger.warning("state file %s has unknown version %r, ignored", path, version)
    return {}


def _from_version_1(slots: object) -> dict[str, Record]:
    if not isinstance(slots, dict):
        raise TypeError("'slots' is not an object")
    records: dict[str, Record] = {}
    for slot, model in slots.items():
        if not isinstance(model, str) or not model:
            raise TypeError(f"slot {slot!r}: model is not a name")
        if model in records:  # one model for two slots: the first keeps it
            logger.warning("state file: model %s recorded for two slots; %s ignored", model, slot)
            continue
        records[model] = Record(model, owner=str(slot), phase="held")
    return records


def _from_version_2(models: object) -> dict[str, Record]:
    if not isinstance(models, dict):
        raise TypeError("'models' is not an object")
    records: dict[str, Record] = {}
    for name, row in models.items():
        if not isinstance(row, dict):
            raise TypeError(f"model {name!r}: not an object")
        owner, origin = row.get("owner"), row.get("origin")
        arrivals = row.get("arrivals", 0)
        if not all(isinstance(v, str | None) for v in (owner, origin, row.get("phase"))):
            raise TypeError(f"model {name!r}: owner, phase and origin are names")
        if not isinstance(arrivals, int) or arrivals < 0:
            raise TypeError(f"model {name!r}: arrivals is a count")
        records[name] = Record(
            name, owner, row.get("phase"), origin, arrivals, bool(row.get("stray", False))
        )
    return records


def write_state(path: str | os.PathLike[str], models: Mapping[str, Mapping[str, object]]) -> None:
    """Replace the file at ``path`` with ``models``, atomically and durably."""
    document = json.dumps({"version": VERSION, "models": dict(models)}, indent=2, sort_keys=True)
    write_atomically(path, (document + "\n").encode("utf-8"))


class StateLock:
    """An advisory lock on ``PATH.lock``: one running controller per state file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.fspath(path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`ConfigError` if another controller holds it.

        A lock file that cannot be created (a read-only folder) is logged and
        the controller runs without it, as it runs with a state file it
        cannot write.
        """
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            logger.warning("cannot lock the state file (%s): %s", self.path, exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"state file {os.fspath(self.path)[:-5]!r} is in use by another running"
                " controller; give each controller its own state_path"
            ) from None
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the lock file stays: removing it would race a new taker)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
