"""Pre-load validation (ADR-0007 §1): every failure kind, the fingerprint
cache, the properties, and cancellation."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threads import threads_in

from slotfsm import preload
from slotfsm.errors import Failure, FailureError, PreloadError, SlotfsmError
from slotfsm.preload import (
    NEEDS_HASH,
    FingerprintCache,
    HashPolicy,
    ValidationStopped,
    default_cache_path,
    fingerprint_of,
    validate,
    validate_cached,
    validate_sync,
)
from slotfsm.registry import ModelEntry

MiB = 1024 * 1024
PROMPTLY = 10.0
"""A bound on what takes milliseconds: it only turns a hang into a failure."""


def gguf_bytes(payload: bytes = b"") -> bytes:
    """A plausible GGUF header (v3, no tensors, no metadata) plus ``payload``."""
    return b"GGUF" + (3).to_bytes(4, "little") + bytes(16) + payload


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def entry_for(path: Path | str, data: bytes, **changes: object) -> ModelEntry:
    """An entry that matches ``data`` written at ``path``, unless changed."""
    fields: dict[str, object] = {
        "name": "test-model",
        "path": path,
        "sha256": sha(data),
        "size": len(data),
        "gguf": True,
    }
    fields.update(changes)
    return ModelEntry(**fields)  # type: ignore[arg-type]


def failed(result: Failure | None, kind: PreloadError) -> Failure:
    assert result is not None, "expected a failure, validation passed"
    assert result.kind is kind, str(result)
    assert result.model == "test-model"
    assert "'test-model'" in result.message
    assert "\n" not in result.message
    return result


class Calls:
    """A progress callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, bytes]:
    data = gguf_bytes(os.urandom(1000))
    return write(tmp_path / "model.gguf", data), data


# -- pass -----------------------------------------------------------------------


def test_a_sound_gguf_file_passes(model: tuple[Path, bytes]) -> None:
    path, data = model
    progress = Calls()
    assert validate_sync(entry_for(path, data), progress=progress) is None
    assert progress.calls == [(len(data), len(data))]


def test_a_non_gguf_asset_skips_the_magic(tmp_path: Path) -> None:
    data = b"RIFF not a gguf file at all"
    path = write(tmp_path / "voice.bin", data)
    assert validate_sync(entry_for(path, data, gguf=False)) is None


def test_size_zero_means_unknown_and_skips_the_size_check(model: tuple[Path, bytes]) -> None:
    path, data = model
    assert validate_sync(entry_for(path, data, size=0)) is None


def test_a_symlink_is_followed(model: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = model
    link = tmp_path / "link.gguf"
    link.symlink_to(path)
    assert validate_sync(entry_for(link, data)) is None


# -- FILE_MISSING -------------------------------------------------------------


def test_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "gone.gguf"
    failure = failed(validate_sync(entry_for(path, b"x" * 30)), PreloadError.FILE_MISSING)
    assert failure.path == str(path)
    assert f"{path} does not exist" in failure.message


def test_file_missing_under_a_file(model: tuple[Path, bytes]) -> None:
    path, _ = model
    inner = f"{path}/inner.gguf"
    failure = failed(validate_sync(entry_for(inner, b"x" * 30)), PreloadError.FILE_MISSING)
    assert inner in failure.message


def test_file_missing_dangling_symlink_names_the_target(tmp_path: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(tmp_path / "blobs" / "sha256-abc")
    failure = failed(validate_sync(entry_for(link, b"x" * 30)), PreloadError.FILE_MISSING)
    assert failure.path == str(link)
    assert str(link) in failure.message
    assert "dangling symlink" in failure.message
    assert str(tmp_path / "blobs" / "sha256-abc") in failure.message


# -- NOT_A_FILE ---------------------------------------------------------------


@pytest.fixture
def no_open(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every os.open: NOT_A_FILE is decided by stat alone."""
    opened: list[str] = []

    def refuse(path: str, *args: object, **kwargs: object) -> int:
        opened.append(path)
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr(os, "open", refuse)
    return opened


def not_a_file(path: str | Path, what: str) -> Failure:
    failure = failed(validate_sync(entry_for(path, b"", size=0)), PreloadError.NOT_A_FILE)
    assert failure.path == str(path)
    assert f"{path} is a {what}, not a regular file" in failure.message
    assert (failure.expected, failure.found) == ("regular file", what)
    return failure


def test_not_a_file_directory(tmp_path: Path, no_open: list[str]) -> None:
    not_a_file(tmp_path, "directory")
    assert no_open == []


def test_not_a_file_fifo_is_never_opened(tmp_path: Path, no_open: list[str]) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    not_a_file(fifo, "FIFO")
    assert no_open == []


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_not_a_file_device(device: str, no_open: list[str]) -> None:
    not_a_file(device, "character device")
    assert no_open == []


def test_not_a_file_socket(no_open: list[str]) -> None:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    directory = Path(os.environ.get("TMPDIR", "/tmp"))
    path = directory / f"slotfsm-test-{os.getpid()}.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        try:
            not_a_file(path, "socket")
        finally:
            path.unlink()
    assert no_open == []


def test_not_a_file_symlink_to_a_directory_names_both(tmp_path: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(tmp_path)
    failure = failed(validate_sync(entry_for(link, b"", size=0)), PreloadError.NOT_A_FILE)
    assert f"{link} (symlink to {tmp_path}) is a directory" in failure.message


def test_not_a_file_when_replaced_between_stat_and_open(
    model: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = model
    other = write(tmp_path / "other.gguf", data)
    real_open = os.open

    def replace_then_open(target: str, flags: int, *args: int) -> int:
        os.replace(other, path)  # same bytes, a different inode
        return real_open(target, flags, *args)

    monkeypatch.setattr(os, "open", replace_then_open)
    failure = failed(validate_sync(entry_for(path, data)), PreloadError.NOT_A_FILE)
    assert f"{path} was replaced between stat and open" in failure.message
    assert failure.expected != failure.found


# -- UNREADABLE ---------------------------------------------------------------
# The tests run as root, which chmod 000 does not stop.  Three ways that work
# for root too: a simulated EACCES from os.open (monkeypatched), a real EACCES
# from a write-only sysfs attribute, and a real EIO from /proc/self/mem.  The
# plain chmod 000 case runs only as a non-root user.


def test_unreadable_open_denied_simulated(
    model: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = model

    def denied(target: str, *args: object) -> int:
        raise PermissionError(13, "Permission denied", target)

    monkeypatch.setattr(os, "open", denied)
    failure = failed(validate_sync(entry_for(path, data)), PreloadError.UNREADABLE)
    assert failure.message.startswith(f"model file {path}: cannot open it: Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_unreadable_chmod_000(model: tuple[Path, bytes]) -> None:
    path, data = model
    path.chmod(0)
    failure = failed(validate_sync(entry_for(path, data)), PreloadError.UNREADABLE)
    assert f"{path}: cannot open it: Permission denied" in failure.message


def test_unreadable_real_permission_denied_even_for_root() -> None:
    path = "/sys/bus/pci/rescan"  # a write-only sysfs attribute: EACCES on read
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except PermissionError:
        pass
    except OSError:
        pytest.skip(f"{path} is not available here")
    else:
        pytest.skip(f"{path} can be opened for reading here")
    result = validate_sync(entry_for(path, b"", size=0, gguf=False))
    failure = failed(result, PreloadError.UNREADABLE)
    assert f"{path}: cannot open it: Permission denied" in failure.message


def test_unreadable_read_error() -> None:
    path = "/proc/self/mem"  # a regular file whose offset 0 is unmapped: EIO
    if not os.path.exists(path):
        pytest.skip("no /proc/self/mem")
    result = validate_sync(entry_for(path, b"", size=0, gguf=False))
    failure = failed(result, PreloadError.UNREADABLE)
    assert f"{path}: cannot read it: Input/output error" in failure.message


def test_unreadable_when_the_file_changes_while_hashed(
    model: tuple[Path, bytes],
) -> None:
    path, data = model
    cache = FingerprintCache(min_age=0)

    def append(done: int, total: int) -> None:
        if done == total:  # once: the appended bytes are read (and reported) too
            with path.open("ab") as file:
                file.write(b"more")

    failure = failed(
        validate_sync(entry_for(path, data), cache=cache, progress=append),
        PreloadError.UNREADABLE,
    )
    assert f"{path} changed while it was being hashed" in failure.message
    assert f"size {len(data)}," in (failure.expected or "")
    assert f"size {len(data) + 4}," in (failure.found or "")
    assert len(cache) == 0


# -- SIZE_MISMATCH ------------------------------------------------------------


def test_size_mismatch_reports_both_sizes_without_hashing(model: tuple[Path, bytes]) -> None:
    path, data = model
    progress = Calls()
    result = validate_sync(entry_for(path, data, size=len(data) + 10), progress=progress)
    failure = failed(result, PreloadError.SIZE_MISMATCH)
    assert failure.path == str(path)
    assert (failure.expected, failure.found) == (str(len(data) + 10), str(len(data)))
    assert f"size of {path} is {len(data)} bytes, registry says {len(data) + 10}" in (
        failure.message
    )
    assert progress.calls == []


# -- BAD_MAGIC ----------------------------------------------------------------


def test_bad_magic_wrong_bytes(tmp_path: Path) -> None:
    data = b"GGML" + bytes(60)
    path = write(tmp_path / "old.gguf", data)
    progress = Calls()
    failure = failed(
        validate_sync(entry_for(path, data), progress=progress), PreloadError.BAD_MAGIC
    )
    assert (failure.expected, failure.found) == ("'GGUF'", "'GGML'")
    assert f"{path} starts with 'GGML' (hex 47474d4c)" in failure.message
    assert "'GGUF'" in failure.message
    assert progress.calls == []


def test_bad_magic_shows_unprintable_bytes(tmp_path: Path) -> None:
    data = b"\x00\xffGU" + bytes(60)
    path = write(tmp_path / "zeros.gguf", data)
    failure = failed(validate_sync(entry_for(path, data)), PreloadError.BAD_MAGIC)
    assert failure.found == "'\\x00\\xffGU'"
    assert "hex 00ff4755" in failure.message


def test_bad_magic_short_file(tmp_path: Path) -> None:
    data = b"GGUF" + bytes(6)
    path = write(tmp_path / "short.gguf", data)
    failure = failed(validate_sync(entry_for(path, data)), PreloadError.BAD_MAGIC)
    assert (failure.expected, failure.found) == ("at least 24 bytes", "10 bytes")
    assert f"{path} is 10 bytes, too short for a GGUF file (at least 24)" in failure.message


# -- SHA256_MISMATCH ----------------------------------------------------------


def test_sha256_mismatch_reports_both_digests(model: tuple[Path, bytes]) -> None:
    path, data = model
    wrong = "0" * 64
    failure = failed(
        validate_sync(entry_for(path, data, sha256=wrong)), PreloadError.SHA256_MISMATCH
    )
    assert (failure.expected, failure.found) == (wrong, sha(data))
    assert f"sha256 of {path} is {sha(data)}, registry says {wrong}" in failure.message


def test_sha256_mismatch_through_a_symlink_names_link_and_target(
    model: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = model
    link = tmp_path / "link.gguf"
    link.symlink_to(path)
    failure = failed(
        validate_sync(entry_for(link, data, sha256="1" * 64)), PreloadError.SHA256_MISMATCH
    )
    assert failure.path == str(link)
    assert f"sha256 of {link} (symlink to {path}) is {sha(data)}" in failure.message


# -- unverified entries ----------------------------------------------------------


def test_an_unverified_entry_is_refused_without_a_hash(model: tuple[Path, bytes]) -> None:
    path, data = model
    progress = Calls()
    unverified = entry_for(path, data, sha256=None)
    assert not unverified.verified
    failure = failed(validate_sync(unverified, progress=progress), PreloadError.SHA256_MISMATCH)
    assert (failure.expected, failure.found) == (None, None)
    assert f"the registry has no sha256 for {path}" in failure.message
    assert "allow unverified" in failure.message
    assert progress.calls == []


@pytest.mark.parametrize("by", ["caller", "entry"])
def test_an_allowed_unverified_entry_passes_unhashed(model: tuple[Path, bytes], by: str) -> None:
    path, data = model
    progress = Calls()
    cache = FingerprintCache(min_age=0)
    unverified = entry_for(path, data, sha256=None, allow_unverified=by == "entry")
    result = validate_sync(
        unverified, cache=cache, progress=progress, allow_unverified=by == "caller"
    )
    assert result is None
    assert progress.calls == []
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("where", "data", "size", "kind"),
    [
        ("gone.gguf", None, None, PreloadError.FILE_MISSING),
        ("/dev/null", None, None, PreloadError.NOT_A_FILE),
        ("model.gguf", gguf_bytes(bytes(100)), 10, PreloadError.SIZE_MISMATCH),
        ("model.gguf", b"GGML" + bytes(100), None, PreloadError.BAD_MAGIC),
    ],
)
def test_an_allowed_unverified_entry_still_gets_every_other_check(
    tmp_path: Path, where: str, data: bytes | None, size: int | None, kind: PreloadError
) -> None:
    path = tmp_path / where
    if data is not None:
        write(path, data)
    unverified = ModelEntry(name="test-model", path=path, size=size, allow_unverified=True)
    failed(validate_sync(unverified), kind)


def test_a_failure_as_plain_json_and_as_an_exception(model: tuple[Path, bytes]) -> None:
    path, data = model
    failure = failed(validate_sync(entry_for(path, data, size=1)), PreloadError.SIZE_MISMATCH)
    as_dict = failure.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict == {
        "kind": "size_mismatch",
        "message": failure.message,
        "path": str(path),
        "model": "test-model",
        "expected": "1",
        "found": str(len(data)),
    }
    error = FailureError(failure)
    assert isinstance(error, SlotfsmError)
    assert error.failure is failure
    assert str(error) == str(failure)
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.failure) == (FailureError, failure)


def test_stop_event_stops_hashing(model: tuple[Path, bytes]) -> None:
    path, data = model
    stop = threading.Event()
    stop.set()
    with pytest.raises(ValidationStopped):
        validate_sync(entry_for(path, data), stop=stop)


# -- the fingerprint cache ----------------------------------------------------


def fp(n: int, changed_ns: int = 0) -> preload.Fingerprint:
    return (1, n, 100, changed_ns, changed_ns)


def test_cache_lookup_and_remember() -> None:
    cache = FingerprintCache(min_age=0)
    assert cache.lookup(fp(1)) is None
    assert cache.remember(fp(1), "AA" * 32)
    assert cache.lookup(fp(1)) == "aa" * 32
    assert len(cache) == 1


def test_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = FingerprintCache(maxsize=2, min_age=0)
    cache.remember(fp(1), "a" * 64)
    cache.remember(fp(2), "b" * 64)
    assert cache.lookup(fp(1)) == "a" * 64  # 1 is now the most recent
    cache.remember(fp(3), "c" * 64)
    assert len(cache) == 2
    assert cache.lookup(fp(2)) is None
    assert cache.lookup(fp(1)) == "a" * 64
    assert cache.lookup(fp(3)) == "c" * 64


def test_cache_refuses_a_fingerprint_too_recent_to_trust() -> None:
    cache = FingerprintCache(min_age=2.0)
    now = time.time_ns()
    young, old = fp(1, changed_ns=now - 1_000_000_000), fp(2, changed_ns=now - 3_000_000_000)
    assert not cache.remember(young, "a" * 64, taken_at_ns=now)
    assert cache.remember(old, "a" * 64, taken_at_ns=now)
    assert cache.lookup(young) is None
    assert cache.lookup(old) == "a" * 64
    # mtime alone being recent is enough to refuse
    assert not cache.remember((1, 3, 100, now, now - 3_000_000_000), "a" * 64, taken_at_ns=now)


SAVED = [".fingerprints.json.lock", "fingerprints.json"]
"""A saved cache and its lock file, and no temporary file."""


def test_cache_save_load_roundtrip_keeps_lru_order(tmp_path: Path) -> None:
    cache = FingerprintCache(min_age=0)
    for n in range(5):
        cache.remember(fp(n), f"{n}" * 64)
    cache.lookup(fp(0))  # most recent now
    file = tmp_path / "deep" / "dir" / "fingerprints.json"
    cache.save(file)
    assert sorted(p.name for p in file.parent.iterdir()) == SAVED

    loaded = FingerprintCache.load(file)
    assert len(loaded) == 5
    assert all(loaded.lookup(fp(n)) == f"{n}" * 64 for n in range(5))

    newest_two = FingerprintCache.load(file, maxsize=2)
    assert len(newest_two) == 2
    assert newest_two.lookup(fp(4)) == "4" * 64
    assert newest_two.lookup(fp(0)) == "0" * 64


def test_cache_save_replaces_the_old_file(tmp_path: Path) -> None:
    file = tmp_path / "fingerprints.json"
    file.write_text("old contents")
    cache = FingerprintCache(min_age=0)
    cache.remember(fp(1), "a" * 64)
    cache.save(file)
    assert FingerprintCache.load(file).lookup(fp(1)) == "a" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == SAVED


def test_cache_save_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "fingerprints.json"
    target.mkdir()  # os.replace onto a directory fails
    with pytest.raises(OSError):
        FingerprintCache().save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == SAVED


def test_a_loaded_cache_saves_back_only_what_changed(tmp_path: Path) -> None:
    file = tmp_path / "fingerprints.json"
    first = FingerprintCache(min_age=0)
    first.remember(fp(1), "a" * 64)
    first.save(file)
    cache = FingerprintCache.load(file, min_age=0)
    assert (cache.path, cache.dirty) == (file, False)
    file.write_text("changed by hand")
    assert cache.save() is False  # nothing remembered since load: not written
    assert file.read_text() == "changed by hand"
    assert cache.remember(fp(2), "b" * 64)
    assert cache.dirty
    assert cache.save() is True
    assert not cache.dirty
    assert FingerprintCache.load(file).lookup(fp(2)) == "b" * 64
    assert cache.save(tmp_path / "copy.json") is True  # an explicit path is always written
    assert len(FingerprintCache.load(tmp_path / "copy.json")) == 2


def test_a_cache_without_a_file_needs_a_path_to_save() -> None:
    with pytest.raises(ValueError, match="no file"):
        FingerprintCache().save()


def test_load_defaults_to_the_command_lines_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = FingerprintCache.load(min_age=0)
    assert cache.path == default_cache_path()
    cache.remember(fp(1), "a" * 64)
    assert cache.save()
    assert FingerprintCache.load().lookup(fp(1)) == "a" * 64


def test_saves_merge_with_what_other_writers_left(tmp_path: Path) -> None:
    file = tmp_path / "fingerprints.json"
    one = FingerprintCache.load(file, min_age=0)
    two = FingerprintCache.load(file, min_age=0)
    one.remember(fp(1), "a" * 64)
    two.remember(fp(2), "b" * 64)
    two.remember(fp(1), "a" * 64)
    one.save()
    two.save()
    on_disk = FingerprintCache.load(file)
    assert [on_disk.lookup(fp(n)) for n in (1, 2)] == ["a" * 64, "b" * 64]
    one.remember(fp(3), "c" * 64)
    one.save()
    assert one.lookup(fp(2)) == "b" * 64  # took in what the other writer saved
    assert len(FingerprintCache.load(file)) == 3


def test_a_merge_keeps_the_newest_entries_within_maxsize(tmp_path: Path) -> None:
    file = tmp_path / "fingerprints.json"
    other = FingerprintCache(min_age=0)
    for n in range(4):
        other.remember(fp(n), f"{n}" * 64)
    other.save(file)
    cache = FingerprintCache(maxsize=3, min_age=0, path=file)
    cache.remember(fp(9), "9" * 64)
    cache.save()
    saved = FingerprintCache.load(file)
    assert len(saved) == 3
    assert [saved.lookup(fp(n)) is not None for n in (9, 3, 2, 1, 0)] == [True] * 3 + [False] * 2
    assert len(cache) == 3 and cache.lookup(fp(9)) == "9" * 64


def test_a_damaged_file_is_overwritten_by_the_next_save(tmp_path: Path) -> None:
    file = tmp_path / "fingerprints.json"
    file.write_text('{"version": 1, "entries": [[1, 2')
    cache = FingerprintCache.load(file, min_age=0)
    assert len(cache) == 0  # one more hash, no error
    cache.remember(fp(1), "a" * 64)
    assert cache.save()
    assert FingerprintCache.load(file).lookup(fp(1)) == "a" * 64


def test_a_failed_save_leaves_the_cache_dirty(tmp_path: Path) -> None:
    file = tmp_path / "fingerprints.json"
    cache = FingerprintCache(min_age=0, path=file)
    cache.remember(fp(1), "a" * 64)
    file.mkdir()  # os.replace onto a directory fails
    with pytest.raises(OSError):
        cache.save()
    assert cache.dirty
    file.rmdir()
    assert cache.save()


def test_concurrent_savers_lose_nothing(tmp_path: Path) -> None:
    """Threads saving to one file at once, each its own cache: every entry survives.

    Each save opens its own lock file descriptor, so threads exclude each
    other as processes do.
    """
    file = tmp_path / "fingerprints.json"
    count = 8
    ready = threading.Barrier(count)
    errors: list[BaseException] = []

    def saver(n: int) -> None:
        cache = FingerprintCache.load(file, min_age=0)
        try:
            ready.wait()
            for round_ in range(5):
                cache.remember(fp(n * 10 + round_), f"{n}" * 64)
                cache.save()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    saved = FingerprintCache.load(file)
    assert len(saved) == count * 5
    assert all(saved.lookup(fp(n * 10 + r)) == f"{n}" * 64 for n in range(count) for r in range(5))


SAVER = """
import sys
from slotfsm.preload import FingerprintCache
file, n = sys.argv[1], int(sys.argv[2])
for round_ in range(20):
    cache = FingerprintCache.load(file, min_age=0)
    cache.remember((1, n * 100 + round_, 100, 0, 0), str(n) * 64)
    cache.save()
"""


def test_processes_saving_at_once_never_corrupt_the_file(tmp_path: Path) -> None:
    file = tmp_path / "fingerprints.json"
    FingerprintCache(min_age=0).save(file)
    savers = [subprocess.Popen([sys.executable, "-c", SAVER, str(file), str(n)]) for n in range(3)]
    while any(saver.poll() is None for saver in savers):
        json.loads(file.read_text())  # whole at every instant
    assert [saver.returncode for saver in savers] == [0, 0, 0]
    assert len(FingerprintCache.load(file)) == 60


def test_a_cache_file_that_cannot_be_locked_is_still_written_whole(tmp_path: Path) -> None:
    file = tmp_path / "fingerprints.json"
    (tmp_path / ".fingerprints.json.lock").mkdir()  # the lock file cannot be opened
    cache = FingerprintCache(min_age=0, path=file)
    cache.remember(fp(1), "a" * 64)
    assert cache.save()
    assert FingerprintCache.load(file).lookup(fp(1)) == "a" * 64


GOOD_ROW = [1, 2, 3, 4, 5, "a" * 64]


@pytest.mark.parametrize(
    "contents",
    [
        "",
        "not json",
        "[]",
        json.dumps({"version": 2, "entries": []}),
        json.dumps({"version": 1}),
        json.dumps({"version": 1, "entries": [GOOD_ROW, [1, 2, 3]]}),
        json.dumps({"version": 1, "entries": [GOOD_ROW, [1, 2, 3, 4, "5", "a" * 64]]}),
        json.dumps({"version": 1, "entries": [GOOD_ROW, [1, 2, 3, 4, True, "a" * 64]]}),
        json.dumps({"version": 1, "entries": [GOOD_ROW, [1, 2, 3, 4, 5, "z" * 64]]}),
        json.dumps({"version": 1, "entries": [GOOD_ROW, [1, 2, 3, 4, 5, "a" * 63]]}),
    ],
)
def test_cache_corrupt_file_gives_an_empty_cache(tmp_path: Path, contents: str) -> None:
    file = tmp_path / "fingerprints.json"
    file.write_text(contents)
    assert len(FingerprintCache.load(file)) == 0


def test_cache_missing_or_unreadable_file_gives_an_empty_cache(tmp_path: Path) -> None:
    assert len(FingerprintCache.load(tmp_path / "nope.json")) == 0
    assert len(FingerprintCache.load(tmp_path)) == 0  # a directory
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    assert len(FingerprintCache.load(tmp_path / "bin.json")) == 0


def test_default_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "slotfsm" / "fingerprints.json"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_path() == tmp_path / "home" / ".cache" / "slotfsm" / "fingerprints.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_path() == tmp_path / "home" / ".cache" / "slotfsm" / "fingerprints.json"


def test_cache_hit_skips_the_hash(model: tuple[Path, bytes]) -> None:
    path, data = model
    entry = entry_for(path, data)
    cache = FingerprintCache(min_age=0)
    first, second, always = Calls(), Calls(), Calls()
    assert validate_sync(entry, cache=cache, progress=first) is None
    assert first.calls != []
    assert cache.lookup(fingerprint_of(os.stat(path))) == entry.sha256

    assert validate_sync(entry, cache=cache, progress=second) is None
    assert second.calls == []  # hash skipped

    assert validate_sync(entry, cache=cache, policy=HashPolicy.ALWAYS, progress=always) is None
    assert always.calls != []


def test_cache_hit_needs_the_same_expected_sha256(model: tuple[Path, bytes]) -> None:
    path, data = model
    cache = FingerprintCache(min_age=0)
    assert validate_sync(entry_for(path, data), cache=cache) is None
    other = entry_for(path, data, sha256="2" * 64)
    failed(validate_sync(other, cache=cache), PreloadError.SHA256_MISMATCH)


def test_cache_hit_still_checks_size_and_magic(model: tuple[Path, bytes]) -> None:
    path, data = model
    cache = FingerprintCache(min_age=0)
    assert validate_sync(entry_for(path, data), cache=cache) is None
    wrong_size = entry_for(path, data, size=len(data) - 1)
    failed(validate_sync(wrong_size, cache=cache), PreloadError.SIZE_MISMATCH)


def test_a_just_written_file_is_not_remembered_by_default(model: tuple[Path, bytes]) -> None:
    path, data = model
    cache = FingerprintCache()  # min_age 2 s: the file is younger than that
    assert validate_sync(entry_for(path, data), cache=cache) is None
    assert len(cache) == 0
    progress = Calls()
    assert validate_sync(entry_for(path, data), cache=cache, progress=progress) is None
    assert progress.calls != []


# -- properties ---------------------------------------------------------------


def wait_for_timestamp_tick(directory: Path, after_ns: int) -> None:
    """Return once the filesystem stamps a change later than ``after_ns``.

    A write within the timestamp granularity of the last change may leave
    mtime and ctime unchanged (the "too recent to trust" rule exists for
    that); the tests that prove ctime catches a rewrite wait here first, by
    touching a probe file until its ctime moves past ``after_ns`` (one
    clock tick, a few ms on Linux; at most a couple of seconds on coarse
    filesystems).  It waits on the condition, not a fixed time.
    """
    probe = directory / ".tick"
    probe.touch()
    deadline = time.monotonic() + 5
    while os.stat(probe).st_ctime_ns <= after_ns:
        assert time.monotonic() < deadline, "the filesystem clock did not move in 5 s"
        os.utime(probe)


def corrupt(path: Path, index: int, xor: int, *, restore_mtime: bool) -> None:
    """Flip bits of one byte in place; optionally put the old mtime back."""
    before = os.stat(path)
    with path.open("r+b") as file:
        file.seek(index)
        old = file.read(1)[0]
        file.seek(index)
        file.write(bytes([old ^ xor]))
    if restore_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


contents = st.one_of(
    st.binary(max_size=4096),
    st.binary(max_size=4096).map(lambda tail: b"GGUF" + tail),
)


@settings(max_examples=150, deadline=None)
@given(
    data=contents,
    size_choice=st.one_of(st.sampled_from(["right", "unknown"]), st.integers(0, 5000)),
    sha_right=st.booleans(),
    other_sha=st.binary(min_size=32, max_size=32),
    gguf=st.booleans(),
)
def test_validation_passes_exactly_when_size_magic_and_sha256_match(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    size_choice: str | int,
    sha_right: bool,
    other_sha: bytes,
    gguf: bool,
) -> None:
    path = write(tmp_path_factory.mktemp("prop") / "model.gguf", data)
    size = {"right": len(data), "unknown": 0}.get(str(size_choice), size_choice)
    assert isinstance(size, int)
    expected_sha = sha(data) if sha_right else other_sha.hex()
    entry = entry_for(path, data, size=size, sha256=expected_sha, gguf=gguf)

    size_ok = size in (0, len(data))
    magic_ok = not gguf or (len(data) >= 24 and data.startswith(b"GGUF"))
    sha_ok = expected_sha == sha(data)
    result = validate_sync(entry, policy=HashPolicy.ALWAYS)

    if size_ok and magic_ok and sha_ok:
        assert result is None
    else:
        first_wrong = (
            PreloadError.SIZE_MISMATCH
            if not size_ok
            else PreloadError.BAD_MAGIC
            if not magic_ok
            else PreloadError.SHA256_MISMATCH
        )
        assert result is not None
        assert result.kind is first_wrong


@settings(max_examples=100, deadline=None)
@given(
    data=contents,
    size_choice=st.sampled_from(["right", "unknown", "wrong"]),
    sha_right=st.booleans(),
    verified=st.booleans(),
    gguf=st.booleans(),
    remembered=st.booleans(),
    policy=st.sampled_from(HashPolicy),
)
def test_an_inline_answer_is_the_full_validations_or_none(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    size_choice: str,
    sha_right: bool,
    verified: bool,
    gguf: bool,
    remembered: bool,
    policy: HashPolicy,
) -> None:
    """``validate_cached`` answers exactly as the full validation does, or leaves it to it.

    It leaves it only for a verified entry the full validation would hash, or
    under a policy that hashes every time (then every check runs in the
    worker thread).
    """
    path = write(tmp_path_factory.mktemp("inline") / "model.gguf", data)
    size = {"right": len(data), "unknown": 0, "wrong": len(data) + 1}[size_choice]
    sha256 = (sha(data) if sha_right else "5" * 64) if verified else None
    entry = entry_for(path, data, size=size, sha256=sha256, gguf=gguf)
    cache = FingerprintCache(min_age=0)
    if remembered:
        validate_sync(entry_for(path, data), cache=cache)
    hashed = Calls()
    full = validate_sync(entry, policy=policy, cache=cache, progress=hashed)
    for allowed in (False, True):
        known = validate_cached(entry, policy=policy, cache=cache, allow_unverified=allowed)
        if known is NEEDS_HASH:
            assert verified and (hashed.calls != [] or policy is HashPolicy.ALWAYS)
        elif allowed and not verified:
            assert known == validate_sync(entry, cache=cache, allow_unverified=True)
        else:
            assert known == full


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[bytes, bool, int, int]:
    gguf = draw(st.booleans())
    if gguf:
        data = gguf_bytes(draw(st.binary(max_size=4096)))
    else:
        data = draw(st.binary(min_size=1, max_size=4096))
    index = draw(st.integers(0, len(data) - 1))
    xor = draw(st.integers(1, 255))
    return data, gguf, index, xor


def assert_corruption_caught(result: Failure | None) -> None:
    assert result is not None, "a corrupted file passed validation"
    assert result.kind in (PreloadError.SHA256_MISMATCH, PreloadError.BAD_MAGIC)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corruptions(), restore_mtime=st.booleans())
def test_a_corrupted_byte_is_always_caught_under_always(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[bytes, bool, int, int],
    restore_mtime: bool,
) -> None:
    data, gguf, index, xor = case
    path = write(tmp_path_factory.mktemp("always") / "model.gguf", data)
    entry = entry_for(path, data, gguf=gguf)
    cache = FingerprintCache(min_age=0)
    assert validate_sync(entry, policy=HashPolicy.ALWAYS, cache=cache) is None
    corrupt(path, index, xor, restore_mtime=restore_mtime)
    assert_corruption_caught(validate_sync(entry, policy=HashPolicy.ALWAYS, cache=cache))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=corruptions(), restore_mtime=st.booleans())
def test_a_corrupted_byte_is_caught_under_fingerprint_after_any_write(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[bytes, bool, int, int],
    restore_mtime: bool,
) -> None:
    data, gguf, index, xor = case
    directory = tmp_path_factory.mktemp("fingerprint")
    path = write(directory / "model.gguf", data)
    entry = entry_for(path, data, gguf=gguf)
    cache = FingerprintCache(min_age=0)  # trust even a just-written file
    assert validate_sync(entry, cache=cache) is None
    remembered = fingerprint_of(os.stat(path))
    assert cache.lookup(remembered) == entry.sha256, "the pass was not remembered"
    wait_for_timestamp_tick(directory, remembered[4])
    corrupt(path, index, xor, restore_mtime=restore_mtime)
    if restore_mtime:
        assert os.stat(path).st_mtime_ns == remembered[3]
    assert_corruption_caught(validate_sync(entry, cache=cache))


@settings(max_examples=50, deadline=None)
@given(case=corruptions(), restore_mtime=st.booleans())
def test_a_corrupted_byte_is_caught_under_fingerprint_with_the_default_cache(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[bytes, bool, int, int],
    restore_mtime: bool,
) -> None:
    # No waiting here: a write in the same clock tick as the first pass is
    # caught because the default cache does not trust a file that young.
    data, gguf, index, xor = case
    path = write(tmp_path_factory.mktemp("default") / "model.gguf", data)
    entry = entry_for(path, data, gguf=gguf)
    cache = FingerprintCache()
    assert validate_sync(entry, cache=cache) is None
    corrupt(path, index, xor, restore_mtime=restore_mtime)
    assert_corruption_caught(validate_sync(entry, cache=cache))


# -- async validate and cancellation ------------------------------------------


@pytest.mark.anyio
async def test_validate_runs_in_a_worker_thread(model: tuple[Path, bytes]) -> None:
    path, data = model
    threads: list[int] = []

    def progress(done: int, total: int) -> None:
        threads.append(threading.get_ident())

    assert await validate(entry_for(path, data), progress=progress) is None
    assert threads and threading.get_ident() not in threads
    failure = await validate(entry_for(path, data, sha256="3" * 64))
    assert failure is not None and failure.kind is PreloadError.SHA256_MISMATCH


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A 4 GiB sparse file: instant to make, seconds to hash."""
    size = 4096 * MiB
    path = tmp_path / "big.bin"
    with path.open("wb") as file:
        file.truncate(size)
    yield path, size
    path.unlink()


def first_chunk_signal() -> tuple[threading.Event, Callable[[int, int], None], list[int]]:
    started = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        started.set()

    return started, progress, seen


@pytest.mark.anyio
@pytest.mark.parametrize("policy", [HashPolicy.ALWAYS, HashPolicy.FINGERPRINT])
async def test_cancelling_validate_stops_the_worker_within_a_chunk(
    big_file: tuple[Path, int], policy: HashPolicy
) -> None:
    """Both ways to the hash (all in the thread; checks inline, then the thread) stop alike."""
    path, size = big_file
    entry = ModelEntry(name="big", path=path, sha256="0" * 64, size=size, gguf=False)
    started, progress, seen = first_chunk_signal()
    results: list[Failure | None] = []
    cache = FingerprintCache(min_age=0)

    async def run() -> None:
        results.append(await validate(entry, policy=policy, cache=cache, progress=progress))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await anyio.to_thread.run_sync(started.wait)
        assert threads_in(preload) == 1
        group.cancel_scope.cancel()
        chunks_after_cancel = len(seen)

    assert results == []  # cancelled, not finished
    assert threads_in(preload) == 0  # the worker is done, not hashing on
    assert len(seen) <= chunks_after_cancel + 1  # at most the chunk in hand when cancelled
    assert seen[-1] < size  # stopped part-way
    assert len(cache) == 0


def hold_the_only_thread(
    limiter: anyio.CapacityLimiter, gate: threading.Event
) -> Callable[[], Any]:
    """A task that takes the default limiter's only token until ``gate`` is set."""
    limiter.total_tokens = 1

    async def hold() -> None:
        await anyio.to_thread.run_sync(gate.wait)

    return hold


@pytest.mark.anyio
async def test_cancelling_a_validation_waiting_for_a_thread(model: tuple[Path, bytes]) -> None:
    path, data = model
    limiter = anyio.to_thread.current_default_thread_limiter()
    gate = threading.Event()
    progress = Calls()
    done: list[Failure | None] = []

    async def run() -> None:
        done.append(await validate(entry_for(path, data), progress=progress))

    async with anyio.create_task_group() as outer:
        outer.start_soon(hold_the_only_thread(limiter, gate))
        while limiter.borrowed_tokens == 0:
            await anyio.lowlevel.checkpoint()
        async with anyio.create_task_group() as inner:
            inner.start_soon(run)
            while limiter.statistics().tasks_waiting == 0:
                await anyio.lowlevel.checkpoint()
            inner.cancel_scope.cancel()
        gate.set()
    assert done == []
    assert progress.calls == []
    assert threads_in(preload) == 0


@pytest.mark.anyio
async def test_validate_remembers_a_pass_and_then_skips_the_hash(
    model: tuple[Path, bytes],
) -> None:
    path, data = model
    entry = entry_for(path, data)
    cache = FingerprintCache(min_age=0)
    first, second = Calls(), Calls()
    assert await validate(entry, cache=cache, progress=first) is None
    assert first.calls != [] and len(cache) == 1
    assert await validate(entry, cache=cache, progress=second) is None
    assert second.calls == []


@pytest.mark.anyio
async def test_what_needs_no_hash_needs_no_thread(model: tuple[Path, bytes]) -> None:
    """A cache hit, an allowed unverified entry and a refusal finish with no worker thread free.

    A miss under the same policy is then hashed in a thread once one is free.
    """
    path, data = model
    entry = entry_for(path, data)
    cache = FingerprintCache(min_age=0)
    assert validate_sync(entry, cache=cache) is None  # remembered
    limiter = anyio.to_thread.current_default_thread_limiter()
    gate = threading.Event()
    results: list[Failure | None] = []

    async def miss() -> None:
        results.append(await validate(entry_for(path, data, sha256="4" * 64), cache=cache))

    async with anyio.create_task_group() as group:
        group.start_soon(hold_the_only_thread(limiter, gate))
        while limiter.borrowed_tokens == 0:
            await anyio.lowlevel.checkpoint()
        try:
            with anyio.fail_after(PROMPTLY):  # a hop to a thread would wait for the gate
                progress = Calls()
                assert await validate(entry, cache=cache, progress=progress) is None
                assert progress.calls == []
                unverified = entry_for(path, data, sha256=None)
                assert await validate(unverified, cache=cache, allow_unverified=True) is None
                failed(await validate(unverified, cache=cache), PreloadError.SHA256_MISMATCH)
                failed(
                    await validate(entry_for(path, data, size=1), cache=cache),
                    PreloadError.SIZE_MISMATCH,
                )
            group.start_soon(miss)
            while limiter.statistics().tasks_waiting == 0:
                await anyio.lowlevel.checkpoint()
            assert results == []  # the miss waits for a thread to hash in
        finally:
            gate.set()  # even on failure: the holding thread cannot be cancelled
    assert len(results) == 1
    failed(results[0], PreloadError.SHA256_MISMATCH)
