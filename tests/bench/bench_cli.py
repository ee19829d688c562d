"""Benchmark of the command line's cost; run by hand, prints a table, asserts nothing.

    python tests/bench/bench_cli.py [--size-mib 1024] [--runs 5] [--help-runs 30]

Measures, in the same run, whole processes as a user starts them (start-up
included), each the median of several runs:

* ``slotfsm validate`` of a file against ``openssl dgst -sha256`` of the same
  file (policy ``always``, so the file is hashed every time; the file is in
  the page cache, so this compares start-up plus hashing, not the disk);
* ``slotfsm --help`` against ``python -c pass`` (the interpreter's own
  start-up), and, to show what is ours, against the smallest argparse
  command a console script can be: ``import re`` (every pip-generated
  script does it) and one parser printing its help.

The two kinds of run alternate so that a change in the machine's load moves
both sides alike.  The file is written to a temporary directory, removed at
the end, and the fingerprint cache goes there too (``XDG_CACHE_HOME``).
``PYTHONDONTWRITEBYTECODE`` is dropped for the measured processes: an
installed package has its bytecode compiled, and recompiling the sources on
every start would measure the compiler instead.

Run it with the interpreter of the installation to measure: the ``slotfsm``
script beside ``sys.executable`` is used (``python -m slotfsm`` when there is
none), and ``slotfsm`` is imported from that installation, not the checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024

VALIDATE_GOAL = 1.05
HELP_GOAL = 1.3


def make_model_file(path: Path, size_mib: int) -> str:
    """Write a GGUF-looking file of ``size_mib`` MiB; return its sha256."""
    block = os.urandom(4 * MiB)
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for index in range(0, size_mib, 4):
            chunk = block[: min(4, size_mib - index) * MiB]
            if index == 0:
                chunk = b"GGUF" + chunk[4:]
            digest.update(chunk)
            file.write(chunk)
    return digest.hexdigest()


def slotfsm_command() -> list[str]:
    script = Path(sys.executable).parent / "slotfsm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "slotfsm"]


def wall_time(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def paired_medians(
    first: list[str], second: list[str], runs: int, env: dict[str, str]
) -> tuple[float, float]:
    """Median wall times of ``first`` and ``second``, run alternately after one warm-up each."""
    wall_time(first, env)
    wall_time(second, env)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        times[0].append(wall_time(first, env))
        times[1].append(wall_time(second, env))
    return statistics.median(times[0]), statistics.median(times[1])


MINIMAL_CLI = "import re, argparse; argparse.ArgumentParser(prog='p').print_help()"


def row(measure: str, ours: float, reference: float, goal: float | None) -> str:
    ratio = ours / reference
    figures = f"{ratio:.2f} ({ours * 1000:,.1f} ms / {reference * 1000:,.1f} ms)"
    if goal is None:
        return f"| {measure} | {figures} | |"
    verdict = "meets" if ratio <= goal else "MISSES"
    return f"| {measure} | {figures} | ≤ {goal:.2f} ({verdict}) |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--runs", type=int, default=5, help="validate runs per side (default 5)")
    parser.add_argument("--help-runs", type=int, default=30, help="--help runs per side")
    args = parser.parse_args()

    slotfsm = slotfsm_command()
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="slotfsm-bench-cli-") as directory:
        env = {**base_env, "XDG_CACHE_HOME": directory}
        model = Path(directory) / "model.gguf"
        sha256 = make_model_file(model, args.size_mib)
        validate = [
            *slotfsm,
            "validate",
            str(model),
            f"--sha256={sha256}",
            f"--size={args.size_mib * MiB}",
            "--hash-policy=always",
        ]
        openssl = ["openssl", "dgst", "-sha256", str(model)]
        ours, reference = paired_medians(validate, openssl, args.runs, env)
        rows.append(
            row(
                f"`slotfsm validate` / `openssl dgst -sha256` ({args.size_mib:,} MiB)",
                ours,
                reference,
                VALIDATE_GOAL,
            )
        )
    help_command = [*slotfsm, "--help"]
    ours, reference = paired_medians(
        help_command, [sys.executable, "-c", "pass"], args.help_runs, base_env
    )
    rows.append(row("`slotfsm --help` / `python -c pass`", ours, reference, HELP_GOAL))
    ours, reference = paired_medians(
        help_command, [sys.executable, "-c", MINIMAL_CLI], args.help_runs, base_env
    )
    rows.append(row("`slotfsm --help` / the smallest argparse command", ours, reference, None))

    print(f"{' '.join(slotfsm)} (Python {sys.version.split()[0]}), medians, ratios as ours / ref")
    print("| measure | result | goal |")
    print("|---|---|---|")
    for line in rows:
        print(line)


if __name__ == "__main__":
    main()
