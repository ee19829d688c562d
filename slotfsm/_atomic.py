"""Small files replaced whole, by writers that take turns.

A reader sees the old bytes or the new, never half; writers that read,
change and replace a file can hold a lock so that none loses another's update.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["locked", "write_atomically"]


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path``: a temporary file beside it, fsync, rename, fsync the folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[bool]:
    """Hold an advisory exclusive lock for ``path`` while the block runs; yield whether held.

    The lock is ``fcntl.flock`` on a lock file beside ``path``
    (``.<name>.lock``, created if needed and left in place: removing it would
    let two writers lock two different files).  It serializes
    read-modify-write cycles between threads and processes that use this
    function.  Where it cannot be taken (no ``fcntl``, a file system that
    refuses ``flock``, a folder that cannot be written) the block runs
    unlocked: a write through :func:`write_atomically` still never leaves a
    torn file, only a concurrent update may be lost.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        yield _flock(fd)
    finally:
        os.close(fd)  # releases the lock


def _flock(fd: int) -> bool:
    if sys.platform == "win32":
        return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return False
    return True
