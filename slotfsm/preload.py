"""Pre-load validation: prove a model file sound before Lemonade hears of it.

ADR-0007 §1.  On Lemonade, a ``/load`` that fails for any reason other than
"file not found" unloads every model of every type (the nuclear evict-all).
So each load is preceded by :func:`validate` (or :func:`validate_sync`), and
a failure keeps the load from being sent at all.

The checks run cheapest first and stop at the first failure:

1. ``stat`` the path (a symlink is followed): nothing there is
   ``FILE_MISSING``; anything but a regular file (directory, FIFO, socket,
   device) is ``NOT_A_FILE``, decided from ``stat`` alone and never opened,
   so a FIFO cannot hang us;
2. the size, unless the registry says 0 (unknown): ``SIZE_MISMATCH``;
3. open the file without blocking and ``fstat`` the descriptor: a different
   file than the one ``stat`` saw is ``NOT_A_FILE`` (replaced under us);
4. for GGUF assets, the first four bytes are ``GGUF`` and the file has at
   least 24 bytes: ``BAD_MAGIC``;
5. the sha256 of the whole file, from the same descriptor, in 4 MiB reads:
   ``SHA256_MISMATCH``; a read error is ``UNREADABLE``.

An *unverified* entry (no sha256 in the registry, see
:attr:`~slotfsm.registry.ModelEntry.verified`) goes through steps 1-4 and
then, unless unverified entries are allowed (``allow_unverified=True`` or
the entry's own ``allow_unverified``), fails step 5 as ``SHA256_MISMATCH``
with ``expected`` None: there is nothing to compare the file with.  When
allowed, it passes without being hashed.

The sha256 step is skipped under :attr:`HashPolicy.FINGERPRINT` when a
:class:`FingerprintCache` already holds this exact file state
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` with the expected
sha256.  Two rules keep that sound:

* **changed while hashing** — if the descriptor's fingerprint after the
  hash differs from the one before, the bytes read may be a mix of two
  versions: the result is ``UNREADABLE`` ("changed while it was being
  hashed") and nothing is remembered;
* **too recent to trust** — a fingerprint is remembered only when the
  file's last change (mtime and ctime) is at least
  :attr:`FingerprintCache.min_age` seconds older than the moment it was
  taken.  A write within the filesystem's timestamp granularity of the last
  one can leave mtime and ctime unchanged; such a file is simply hashed
  again next time.

The race this cannot close is the one ADR-0007 accepts: the file may be
replaced or deleted between validation and Lemonade's own open.

A :class:`FingerprintCache` can be kept in a file (:meth:`FingerprintCache.load`,
:meth:`FingerprintCache.save`) that the command line and any number of
controllers share: saves merge with what is on disk under a lock and replace
the file atomically, and a damaged file reads as empty.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import attrs

from slotfsm._atomic import locked, write_atomically
from slotfsm.errors import ConfigError, Failure, PreloadError, ValidationStopped
from slotfsm.registry import ModelEntry

__all__ = [
    "CHUNK_SIZE",
    "Fingerprint",
    "FingerprintCache",
    "HashPolicy",
    "NEEDS_HASH",
    "NeedsHash",
    "ValidationStopped",
    "default_cache_path",
    "fingerprint_of",
    "validate",
    "validate_cached",
    "validate_sync",
]

CHUNK_SIZE = 4 * 1024 * 1024
"""Bytes per read while hashing; cancellation and progress act per chunk."""

GGUF_MAGIC = b"GGUF"
GGUF_MIN_SIZE = 24
"""Magic, version (u32), tensor count (u64), metadata count (u64)."""

Fingerprint = tuple[int, int, int, int, int]
"""``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of one file state."""

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(bytes_hashed, total_bytes)`` after every chunk."""

Checkpoint = Callable[[], None]
"""Called before every chunk; stops the hash by raising."""


class HashPolicy(enum.StrEnum):
    """When the sha256 step runs."""

    ALWAYS = "always"
    """Hash on every validation."""
    FINGERPRINT = "fingerprint"
    """Skip the hash when the file's fingerprint was already verified."""


def fingerprint_of(st: os.stat_result) -> Fingerprint:
    """The fingerprint of the file state ``st`` describes."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FingerprintCache:
    """Which file states have already been hashed, and to which sha256.

    A bounded LRU map from :data:`Fingerprint` to a sha256, safe to share
    between threads (hashes run in worker threads).  ``min_age`` (seconds)
    is the "too recent to trust" rule of this module: see :meth:`remember`.

    A cache read with :meth:`load` is bound to its file: :meth:`save` writes
    back to it, and does nothing when nothing was remembered since
    (:attr:`dirty`), so a controller may call it after every validation.
    """

    def __init__(
        self,
        maxsize: int = 1024,
        *,
        min_age: float = 2.0,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ConfigError(f"maxsize must be >= 1, got {maxsize}")
        if min_age < 0:
            raise ConfigError(f"min_age must be >= 0, got {min_age}")
        self.maxsize = maxsize
        self.min_age = min_age
        self.path = None if path is None else Path(path)
        """The file :meth:`save` writes to by default, or None."""
        self._lock = threading.Lock()
        self._entries: OrderedDict[Fingerprint, str] = OrderedDict()
        self._dirty = False

    def lookup(self, fp: Fingerprint) -> str | None:
        """The sha256 verified for ``fp``, or None; marks it recently used."""
        with self._lock:
            sha256 = self._entries.get(fp)
            if sha256 is not None:
                self._entries.move_to_end(fp)
            return sha256

    def remember(self, fp: Fingerprint, sha256: str, *, taken_at_ns: int | None = None) -> bool:
        """Remember that the file state ``fp`` hashes to ``sha256``.

        ``taken_at_ns`` is the wall-clock time (``time.time_ns()``) at which
        ``fp`` was read, now if omitted.  The fingerprint is not remembered
        (and False is returned) when the file's mtime or ctime is less than
        ``min_age`` seconds older than that: a later write within the
        filesystem's timestamp granularity might not change them.  The least
        recently used entry is evicted beyond ``maxsize``.
        """
        taken_at_ns = time.time_ns() if taken_at_ns is None else taken_at_ns
        last_change_ns = max(fp[3], fp[4])
        if last_change_ns > taken_at_ns - int(self.min_age * 1e9):
            return False
        with self._lock:
            self._entries[fp] = sha256.lower()
            self._entries.move_to_end(fp)
            self._trim()
            self._dirty = True
        return True

    @property
    def dirty(self) -> bool:
        """True when something was remembered since the cache was loaded or saved."""
        with self._lock:
            return self._dirty

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        maxsize: int = 1024,
        *,
        min_age: float = 2.0,
    ) -> FingerprintCache:
        """Read a cache file and bind the cache to it (see :attr:`path`).

        ``path`` defaults to :func:`default_cache_path`, the file the command
        line uses.  A missing, unreadable or corrupt file gives an empty
        cache, never an exception: the worst outcome of a lost cache is one
        more hash.  Blocking (a small file read).
        """
        target = default_cache_path() if path is None else Path(path)
        cache = cls(maxsize, min_age=min_age, path=target)
        cache._entries.update(_read_rows(target)[-maxsize:])
        return cache

    def save(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Merge the cache into its file; return whether the file was written.

        Without ``path``, writes to :attr:`path`, and only when the cache is
        :attr:`dirty`.  With ``path``, always writes there.  The write holds
        an advisory lock on the file (a ``.<name>.lock`` file beside it),
        re-reads what other writers left there, keeps the newest
        ``maxsize`` of both (this cache's entries count as newer), replaces
        the file atomically (temp file, fsync, rename) and takes the merged
        entries in.  So the command line and any number of controllers can
        share one file: none corrupts it and, where ``flock`` works, none
        loses another's entries.  A damaged file is simply overwritten.

        Blocking (fsync): from async code, run it in a worker thread.  The
        directory is created if needed.  Raises ``OSError`` when the file
        cannot be written, and ``ValueError`` when there is no path.
        """
        target = self.path if path is None else Path(path)
        if target is None:
            raise ConfigError("this cache has no file: give save() a path")
        with self._lock:
            if path is None and not self._dirty:
                return False
            ours = list(self._entries.items())
            self._dirty = False
        try:
            with locked(target):
                merged = OrderedDict(_read_rows(target))
                for fp, sha256 in ours:
                    merged[fp] = sha256
                    merged.move_to_end(fp)
                while len(merged) > self.maxsize:
                    merged.popitem(last=False)
                rows = [[*fp, sha256] for fp, sha256 in merged.items()]
                text = json.dumps({"version": 1, "entries": rows}, separators=(",", ":"))
                write_atomically(target, text.encode("utf-8"))
        except BaseException:
            with self._lock:
                self._dirty = True
            raise
        self._take_in(merged.items())
        return True

    def _take_in(self, rows: Iterable[tuple[Fingerprint, str]]) -> None:
        """Add entries other writers saved, as older than every entry held now."""
        with self._lock:
            entries = OrderedDict(rows)
            for fp, sha256 in self._entries.items():
                entries[fp] = sha256
                entries.move_to_end(fp)
            self._entries = entries
            self._trim()

    def _trim(self) -> None:
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)


def _read_rows(path: Path) -> list[tuple[Fingerprint, str]]:
    """The rows of a saved cache, oldest first; none when the file is missing or damaged."""
    try:
        return _parse_rows(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return []


def _parse_rows(document: object) -> list[tuple[Fingerprint, str]]:
    """The ``(fingerprint, sha256)`` rows of a saved cache, oldest first."""
    if not isinstance(document, dict) or document.get("version") != 1:
        raise ValueError("not a fingerprint cache")
    rows = document.get("entries")
    if not isinstance(rows, list):
        raise TypeError("no entries")
    return [_parse_row(row) for row in rows]


def _parse_row(row: object) -> tuple[Fingerprint, str]:
    if not isinstance(row, list) or len(row) != 6:
        raise TypeError("bad row")
    *numbers, sha256 = row
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise TypeError("bad fingerprint")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise TypeError("bad sha256")
    dev, ino, size, mtime_ns, ctime_ns = numbers
    return (dev, ino, size, mtime_ns, ctime_ns), sha256.lower()


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/slotfsm/fingerprints.json`` (or under ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "slotfsm" / "fingerprints.json"


# -- the checks ---------------------------------------------------------------


def validate_sync(
    entry: ModelEntry,
    *,
    policy: HashPolicy = HashPolicy.FINGERPRINT,
    cache: FingerprintCache | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    allow_unverified: bool = False,
) -> Failure | None:
    """Check ``entry``'s file on disk (ADR-0007 §1); blocking.

    Returns None when the file passes, else the first :class:`Failure`
    (checks run cheapest first; see the module docstring).  ``progress`` is
    called after every chunk hashed.  When ``stop`` is set, hashing stops
    within one chunk and :class:`ValidationStopped` is raised.  With a
    ``cache``, a full pass is remembered, and under
    :attr:`HashPolicy.FINGERPRINT` a remembered file state skips the hash.
    An entry without a sha256 fails unless ``allow_unverified`` or its own
    ``allow_unverified`` says it may pass unhashed.
    """
    checkpoint = None if stop is None else functools.partial(_raise_if_set, stop)
    return _validate(entry, policy, cache, progress, checkpoint, allow_unverified)


async def validate(
    entry: ModelEntry,
    *,
    policy: HashPolicy = HashPolicy.FINGERPRINT,
    cache: FingerprintCache | None = None,
    progress: ProgressCallback | None = None,
    allow_unverified: bool = False,
) -> Failure | None:
    """Check ``entry``'s file on disk (ADR-0007 §1) without blocking on a hash.

    The same checks as :func:`validate_sync`.  The hash runs in a worker
    thread (``progress`` is called from that thread) and stops within one
    chunk when the caller is cancelled; the cancellation propagates once the
    thread has stopped, so none is left hashing.

    When the hash may turn out unnecessary (a ``cache`` under
    :attr:`HashPolicy.FINGERPRINT`, or an unverified entry), the checks
    before it (a ``stat``, an ``open``, a 4-byte read) run inline and a
    cache hit finishes without a thread.  Otherwise everything runs in the
    thread, so a hung file system stalls only this validation.
    """
    import anyio.from_thread  # here, not at the top: ``slotfsm validate`` never needs it
    import anyio.lowlevel
    import anyio.to_thread

    if entry.verified and (cache is None or policy is HashPolicy.ALWAYS):  # it will hash
        return await anyio.to_thread.run_sync(
            _validate,
            entry,
            policy,
            cache,
            progress,
            anyio.from_thread.check_cancelled,
            allow_unverified,
        )
    await anyio.lowlevel.checkpoint()  # a cancellation point, as the thread hop would be
    result = _inspect(entry, policy, cache, allow_unverified)
    if not isinstance(result, _Pending):
        return result
    with result:
        return await anyio.to_thread.run_sync(
            _hash_pending, entry, result, cache, progress, anyio.from_thread.check_cancelled
        )


class NeedsHash(enum.Enum):
    """The type of :data:`NEEDS_HASH`."""

    NEEDS_HASH = "needs a hash"


NEEDS_HASH: Final = NeedsHash.NEEDS_HASH
"""What :func:`validate_cached` answers when only hashing the file can decide."""


def validate_cached(
    entry: ModelEntry,
    *,
    policy: HashPolicy = HashPolicy.FINGERPRINT,
    cache: FingerprintCache | None = None,
    allow_unverified: bool = False,
) -> Failure | NeedsHash | None:
    """What :func:`validate` would answer, if it can be told without hashing.

    The checks before the hash (a ``stat``, an ``open``, a 4-byte read) run
    here, in the calling thread; a cache hit, a refusal or an unverified
    entry is answered at once (``None`` for a pass, or the :class:`Failure`,
    the same :func:`validate` would give).  When only a hash can decide, or
    the policy hashes every time (then :func:`validate` runs every check in
    its worker thread), nothing is done and :data:`NEEDS_HASH` is returned:
    call :func:`validate` then.
    """
    if entry.verified and (cache is None or policy is HashPolicy.ALWAYS):
        return NEEDS_HASH
    result = _inspect(entry, policy, cache, allow_unverified)
    if isinstance(result, _Pending):
        os.close(result.fd)
        return NEEDS_HASH
    return result


def _raise_if_set(stop: threading.Event) -> None:
    if stop.is_set():
        raise ValidationStopped


def _validate(
    entry: ModelEntry,
    policy: HashPolicy,
    cache: FingerprintCache | None,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None,
    allow_unverified: bool,
) -> Failure | None:
    """Every check, in the calling thread."""
    result = _inspect(entry, policy, cache, allow_unverified)
    if not isinstance(result, _Pending):
        return result
    with result:
        return _hash_pending(entry, result, cache, progress, checkpoint)


@attrs.frozen
class _Pending:
    """A file that passed every check but the hash: its open descriptor and state.

    The descriptor is closed when the ``with`` block around it ends.
    """

    fd: int
    before: os.stat_result
    taken_at_ns: int

    def __enter__(self) -> _Pending:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


def _inspect(
    entry: ModelEntry,
    policy: HashPolicy,
    cache: FingerprintCache | None,
    allow_unverified: bool,
) -> Failure | _Pending | None:
    """Steps 1-4 and the unverified and cache rules; a :class:`_Pending` if a hash must decide."""
    st = _stat(entry)
    if isinstance(st, Failure):
        return st
    failure = _check_type(entry, st) or _check_size(entry, st)
    if failure is not None:
        return failure
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return _open_failure(entry, exc)
    handed_over = False
    try:
        pending = _Pending(fd, os.fstat(fd), time.time_ns())
        failure = _check_same_file(entry, st, pending.before)
        if failure is None and entry.gguf:
            failure = _check_magic(entry, fd, pending.before.st_size)
        if failure is None and entry.sha256 is None:
            allowed = allow_unverified or entry.allow_unverified
            failure = None if allowed else _unverified(entry)
        elif failure is None and not _remembered(entry, pending.before, policy, cache):
            handed_over = True
            return pending
    except OSError as exc:
        failure = _unreadable(entry, f"cannot read it: {_reason(exc)}")
    finally:
        if not handed_over:
            os.close(fd)
    return failure


def _remembered(
    entry: ModelEntry, st: os.stat_result, policy: HashPolicy, cache: FingerprintCache | None
) -> bool:
    """True when the cache already verified this file state against the entry's sha256."""
    if policy is not HashPolicy.FINGERPRINT or cache is None or entry.sha256 is None:
        return False
    return cache.lookup(fingerprint_of(st)) == entry.sha256


def _hash_pending(
    entry: ModelEntry,
    pending: _Pending,
    cache: FingerprintCache | None,
    progress: ProgressCallback | None,
    checkpoint: Checkpoint | None,
) -> Failure | None:
    """Step 5: hash the descriptor, compare, and remember a pass."""
    fp = fingerprint_of(pending.before)
    try:
        digest = _hash_fd(pending.fd, pending.before.st_size, progress, checkpoint)
        after = os.fstat(pending.fd)
    except OSError as exc:
        return _unreadable(entry, f"cannot read it: {_reason(exc)}")
    if fingerprint_of(after) != fp:
        return _changed_while_hashing(entry, pending.before, after)
    if digest != entry.sha256:
        return _failure(
            PreloadError.SHA256_MISMATCH,
            entry,
            f"sha256 of {_describe(entry.path)} is {digest}, registry says {entry.sha256}",
            expected=entry.sha256,
            found=digest,
        )
    if cache is not None:
        cache.remember(fp, digest, taken_at_ns=pending.taken_at_ns)
    return None


def _stat(entry: ModelEntry) -> os.stat_result | Failure:
    try:
        return os.stat(entry.path)
    except (FileNotFoundError, NotADirectoryError):
        return _missing(entry)
    except OSError as exc:  # permission denied on a directory, a symlink loop, I/O
        return _unreadable(entry, f"cannot stat it: {_reason(exc)}")


def _missing(entry: ModelEntry) -> Failure:
    path = entry.path
    if os.path.islink(path):
        target = os.path.realpath(path)
        message = f"model file {path} is a dangling symlink to {target}, which does not exist"
    else:
        message = f"model file {path} does not exist"
    return _failure(PreloadError.FILE_MISSING, entry, message)


def _check_type(entry: ModelEntry, st: os.stat_result) -> Failure | None:
    if stat.S_ISREG(st.st_mode):
        return None
    what = _kind_of_file(st.st_mode)
    return _failure(
        PreloadError.NOT_A_FILE,
        entry,
        f"{_describe(entry.path)} is a {what}, not a regular file",
        expected="regular file",
        found=what,
    )


def _kind_of_file(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ]
    for test, name in kinds:
        if test(mode):
            return name
    return f"special file (mode {stat.filemode(mode)})"


def _check_size(entry: ModelEntry, st: os.stat_result) -> Failure | None:
    if entry.size is None or st.st_size == entry.size:
        return None
    return _failure(
        PreloadError.SIZE_MISMATCH,
        entry,
        f"size of {_describe(entry.path)} is {st.st_size} bytes, registry says {entry.size}",
        expected=str(entry.size),
        found=str(st.st_size),
    )


def _open_failure(entry: ModelEntry, exc: OSError) -> Failure:
    if isinstance(exc, FileNotFoundError):
        return _missing(entry)  # deleted between stat and open
    return _unreadable(entry, f"cannot open it: {_reason(exc)}")


def _check_same_file(
    entry: ModelEntry, st: os.stat_result, opened: os.stat_result
) -> Failure | None:
    """The descriptor must be the regular file ``stat`` saw, not a replacement."""
    is_regular = stat.S_ISREG(opened.st_mode)
    if is_regular and (opened.st_dev, opened.st_ino) == (st.st_dev, st.st_ino):
        return None
    now = "another regular file" if is_regular else f"a {_kind_of_file(opened.st_mode)}"
    return _failure(
        PreloadError.NOT_A_FILE,
        entry,
        f"{_describe(entry.path)} was replaced between stat and open (now {now})",
        expected=f"inode {st.st_ino}",
        found=f"inode {opened.st_ino}",
    )


def _changed_while_hashing(
    entry: ModelEntry, before: os.stat_result, after: os.stat_result
) -> Failure:
    """UNREADABLE: the bytes hashed may mix two versions of the file."""

    def state(st: os.stat_result) -> str:
        return f"size {st.st_size}, mtime_ns {st.st_mtime_ns}, ctime_ns {st.st_ctime_ns}"

    return _failure(
        PreloadError.UNREADABLE,
        entry,
        f"model file {_describe(entry.path)} changed while it was being hashed"
        f" ({state(before)} became {state(after)}); not verified, try again",
        expected=state(before),
        found=state(after),
    )


def _check_magic(entry: ModelEntry, fd: int, size: int) -> Failure | None:
    if size < GGUF_MIN_SIZE:
        return _failure(
            PreloadError.BAD_MAGIC,
            entry,
            f"{_describe(entry.path)} is {size} bytes,"
            f" too short for a GGUF file (at least {GGUF_MIN_SIZE})",
            expected=f"at least {GGUF_MIN_SIZE} bytes",
            found=f"{size} bytes",
        )
    magic = os.pread(fd, len(GGUF_MAGIC), 0)
    if magic == GGUF_MAGIC:
        return None
    shown = _show_bytes(magic)
    return _failure(
        PreloadError.BAD_MAGIC,
        entry,
        f"{_describe(entry.path)} starts with {shown} (hex {magic.hex()}), expected GGUF magic"
        f" {_show_bytes(GGUF_MAGIC)}",
        expected=_show_bytes(GGUF_MAGIC),
        found=shown,
    )


def _show_bytes(data: bytes) -> str:
    """``b'GG\\x00F'`` shown as ``'GG\\x00F'``: readable, escapes kept."""
    return repr(data)[1:]


def _hash_fd(
    fd: int, total: int, progress: ProgressCallback | None, checkpoint: Checkpoint | None
) -> str:
    """sha256 of the file at ``fd`` from offset 0, one reused buffer."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(min(CHUNK_SIZE, total + 1)))  # small files, small buffer
    done = 0
    with open(fd, "rb", buffering=0, closefd=False) as file:
        while True:
            if checkpoint is not None:
                checkpoint()
            count = file.readinto(buffer)
            if not count:
                break
            digest.update(buffer[:count])
            done += count
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def _unverified(entry: ModelEntry) -> Failure:
    """The refusal of an entry without a sha256: ``expected`` None, nothing to compare with."""
    return _failure(
        PreloadError.SHA256_MISMATCH,
        entry,
        f"the registry has no sha256 for {_describe(entry.path)}, so it cannot be verified;"
        " allow unverified entries to load it anyway",
    )


def _describe(path: str) -> str:
    """``path``, naming the symlink's target when it is one."""
    if os.path.islink(path):
        return f"{path} (symlink to {os.path.realpath(path)})"
    return path


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _unreadable(entry: ModelEntry, why: str) -> Failure:
    return _failure(PreloadError.UNREADABLE, entry, f"model file {_describe(entry.path)}: {why}")


def _failure(
    kind: PreloadError,
    entry: ModelEntry,
    message: str,
    *,
    expected: str | None = None,
    found: str | None = None,
) -> Failure:
    return Failure(
        kind=kind,
        message=f"{message} (model {entry.name!r})",
        path=entry.path,
        model=entry.name,
        expected=expected,
        found=found,
    )
