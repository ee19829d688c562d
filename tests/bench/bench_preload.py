"""Benchmark of pre-load validation; run by hand, prints a table, asserts nothing.

    python tests/bench/bench_preload.py [--size-mib 1024]

Makes a file of random bytes in a temporary directory (removed at the end)
and measures, in the same run:

* full validation (sha256 policy ``always``) against ``openssl dgst -sha256``;
* a full validation against a revalidation of the unchanged file under the
  ``fingerprint`` policy;
* a revalidation the cache answers through the async ``validate`` (done
  inline) against the same run in a worker thread;
* the rejection of a size-mismatched file;
* the worst lateness of a 1 ms timer on the event loop while a hash runs in a
  worker thread (asyncio and trio);
* two validations at once against one (wall time: 1.0 means both cores were
  used, 2.0 that they ran one after the other), next to the same ratio for
  two ``openssl`` processes, which shows what the machine itself allows, and
  how many CPUs the process kept busy meanwhile.

Every time is the best of a few runs with the file in the page cache, so the
ratios compare hashing, not the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio

from slotfsm.preload import FingerprintCache, HashPolicy, validate, validate_sync
from slotfsm.registry import ModelEntry

MiB = 1024 * 1024


def make_file(path: Path, size_mib: int) -> str:
    """Write ``size_mib`` MiB of random bytes; return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for _ in range(size_mib):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            file.write(chunk)
    return digest.hexdigest()


def best_of(runs: int, action: Callable[[], object]) -> float:
    """The shortest wall time of ``runs`` calls of ``action``, in seconds."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def worst_of(runs: int, action: Callable[[], object]) -> float:
    worst = 0.0
    for _ in range(runs):
        started = time.perf_counter()
        action()
        worst = max(worst, time.perf_counter() - started)
    return worst


def cpu_per_wall(action: Callable[[], object]) -> float:
    """This process's CPU time (all threads) over wall time while ``action`` runs."""
    cpu, wall = time.process_time(), time.perf_counter()
    action()
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def openssl(path: Path) -> None:
    subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, capture_output=True)


def two_openssl(path: Path) -> None:
    command = ["openssl", "dgst", "-sha256", str(path)]
    running = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(2)]
    for process in running:
        process.wait()


def full_validation(entry: ModelEntry) -> None:
    result = validate_sync(entry, policy=HashPolicy.ALWAYS)
    if result is not None:
        raise SystemExit(f"validation failed: {result}")


async def timer_lateness(entry: ModelEntry) -> float:
    """Worst lateness (s) of a 1 ms sleep while ``entry`` is hashed in a thread."""
    worst = 0.0
    async with anyio.create_task_group() as group:

        async def hash_then_stop() -> None:
            await validate(entry, policy=HashPolicy.ALWAYS)
            group.cancel_scope.cancel()

        group.start_soon(hash_then_stop)
        while True:
            started = time.perf_counter()
            await anyio.sleep(0.001)
            worst = max(worst, time.perf_counter() - started - 0.001)
    return worst


async def idle_lateness() -> float:
    """Worst lateness (s) of 500 sleeps of 1 ms with nothing else running."""
    worst = 0.0
    for _ in range(500):
        started = time.perf_counter()
        await anyio.sleep(0.001)
        worst = max(worst, time.perf_counter() - started - 0.001)
    return worst


async def best_await(runs: int, action: Callable[[], Awaitable[object]]) -> float:
    """The shortest wall time of ``runs`` awaits of ``action()``, in seconds."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        await action()
        best = min(best, time.perf_counter() - started)
    return best


async def concurrent(entry: ModelEntry, count: int) -> None:
    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(lambda: validate(entry, policy=HashPolicy.ALWAYS))


def measure(path: Path, entry: ModelEntry) -> list[tuple[str, str, str]]:
    full_validation(entry)  # warm the page cache
    openssl(path)
    t_openssl = best_of(3, lambda: openssl(path))
    t_full = best_of(3, lambda: full_validation(entry))

    # min_age=0: the file was just written; the rule about young files is
    # about trusting timestamps, not about speed.
    cache = FingerprintCache(min_age=0)
    validate_sync(entry, cache=cache)
    t_again = best_of(200, lambda: validate_sync(entry, cache=cache))
    t_inline = anyio.run(best_await, 200, lambda: validate(entry, cache=cache))
    in_thread = partial(validate_sync, entry, cache=cache)
    t_hop = anyio.run(best_await, 200, lambda: anyio.to_thread.run_sync(in_thread))

    wrong_size = ModelEntry(
        name=entry.name, path=entry.path, sha256=entry.sha256, size=entry.size + 1, gguf=False
    )
    t_reject = worst_of(100, lambda: validate_sync(wrong_size))

    late_asyncio = anyio.run(timer_lateness, entry, backend="asyncio")
    late_trio = anyio.run(timer_lateness, entry, backend="trio")
    idle_asyncio = anyio.run(idle_lateness, backend="asyncio")
    idle_trio = anyio.run(idle_lateness, backend="trio")

    t_one = best_of(2, lambda: anyio.run(concurrent, entry, 1))
    t_two = best_of(2, lambda: anyio.run(concurrent, entry, 2))
    cores_busy = cpu_per_wall(lambda: anyio.run(concurrent, entry, 2))
    t_two_openssl = best_of(2, lambda: two_openssl(path))

    return [
        (
            "full validation / `openssl dgst -sha256`",
            f"{t_full / t_openssl:.2f} ({t_full:.3f} s / {t_openssl:.3f} s)",
            "≤ 1.10",
        ),
        (
            "full validation / revalidation of the unchanged file (fingerprint)",
            f"{t_full / t_again:,.0f}x ({t_again * 1e6:.0f} µs)",
            "≥ 100x",
        ),
        (
            "cache hit through async `validate` (inline) / the same in a worker thread",
            f"{t_inline / t_hop:.2f} ({t_inline * 1e6:.0f} µs / {t_hop * 1e6:.0f} µs)",
            "< 1 (no thread hop)",
        ),
        (
            "rejection of a size-mismatched file (worst of 100)",
            f"{t_reject * 1e3:.3f} ms",
            "< 5 ms",
        ),
        (
            "worst lateness of a 1 ms timer during a hash, asyncio",
            f"{late_asyncio * 1e3:.2f} ms",
            "≤ 10 ms",
        ),
        (
            "worst lateness of a 1 ms timer during a hash, trio",
            f"{late_trio * 1e3:.2f} ms",
            "≤ 10 ms",
        ),
        (
            "for comparison: the same with no hash running, asyncio / trio",
            f"{idle_asyncio * 1e3:.2f} ms / {idle_trio * 1e3:.2f} ms",
            "",
        ),
        (
            "2 validations at once / 1 (wall time)",
            f"{t_two / t_one:.2f} ({t_two:.3f} s / {t_one:.3f} s)",
            f"≈ 1.0 with {os.cpu_count()} CPUs (2.0 = one core)",
        ),
        (
            "CPUs busy during 2 validations at once (CPU time / wall time)",
            f"{cores_busy:.2f}",
            "≈ 2 (1 = the GIL serialized them)",
        ),
        (
            "for comparison: 2 `openssl dgst` processes at once / 1 (what this machine allows)",
            f"{t_two_openssl / t_openssl:.2f} ({t_two_openssl:.3f} s / {t_openssl:.3f} s)",
            "",
        ),
    ]


def print_table(size_mib: int, rows: list[tuple[str, str, str]]) -> None:
    print(f"Pre-load validation, {size_mib} MiB file of random bytes, {os.cpu_count()} CPUs")
    print()
    print("| measure | result | goal |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    args = parser.parse_args(argv)
    if shutil.which("openssl") is None:
        print("openssl is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="slotfsm-bench-") as directory:
        path = Path(directory) / "model.bin"
        digest = make_file(path, args.size_mib)
        entry = ModelEntry(
            name="bench", path=path, sha256=digest, size=args.size_mib * MiB, gguf=False
        )
        rows = measure(path, entry)
    print_table(args.size_mib, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
