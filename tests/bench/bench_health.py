"""``/health`` benchmark: what reading and parsing a reading costs as it grows.

Run by hand::

    python tests/bench/bench_health.py [--rows 1000 10000] [--runs 21] [--backend asyncio]

It asserts nothing.  For each number of rows, and for two shapes of row, it
times in one run, interleaved (so the machine's other work weighs on all
alike), and prints medians and ratios:

* ``json.loads`` of the body: the reference, the least any client could do;
* ``LemonadeClient.health()`` on an in-process transport that answers at once
  with that body (the bounded read, ``json.loads`` and slotfsm's parsing);
* the parsing alone (``health()`` minus ``json.loads``), per row.

The two shapes: *compact* rows (``model_name``, ``type``, ``last_use``; about
60 bytes, as :class:`bench_scale.InstantLemonade` serves) and *full* rows as
Lemonade 11.7.0 sends them (about 850 bytes and 22 fields, the shape of
``REAL_ROW`` in ``tests/test_lemonade_client.py``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import httpx

from slotfsm.lemonade import LemonadeClient

URL = "http://lemonade"
MODELS = "/home/someone/.local/share/lemonade/models"


def compact_row(n: int) -> dict[str, Any]:
    """A row as the scale benchmark's instant server sends it."""
    return {"model_name": f"m{n}", "type": "llm", "last_use": 1_000 + n}


def full_row(n: int) -> dict[str, Any]:
    """An 11.7.0 row with paths of a typical install, one model file each."""
    name = f"Qwen3-Coder-30B-A3B-Q4_K_M-{n:05d}"
    port = str(41_234 + n)
    return {
        "backend_alive": True,
        "backend_health": "ready",
        "backend_url": f"http://127.0.0.1:{port}/v1",
        "checkpoint": f"{MODELS}/{name}.gguf",
        "device": "cpu",
        "is_busy": False,
        "is_streaming": n % 7 == 0,
        "last_use": 3_928_460 + n,
        "launch_command": [
            "/home/someone/.local/share/lemonade/bin/llamacpp/cpu/llama-server",
            "-m",
            f"{MODELS}/{name}.gguf",
            "--ctx-size",
            "4096",
            "--port",
            port,
            "--jinja",
            "--metrics",
        ],
        "loaded": True,
        "max_context_window": 262144,
        "model_name": name,
        "pid": 570_912 + n,
        "pinned": False,
        "recipe": "llamacpp",
        "recipe_options": {"ctx_size": 4096, "llamacpp_args": "", "llamacpp_backend": "cpu"},
        "residency_class": "standard",
        "slot_pool": "standard/llm",
        "status": "ready",
        "type": "llm",
        "watchdog_reset": False,
    }


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {"compact": compact_row, "full": full_row}


def body_of(shape: str, rows: int) -> bytes:
    doc = {
        "status": "ok",
        "version": "11.7.0",
        "all_models_loaded": [SHAPES[shape](n) for n in range(rows)],
        "max_models": {"llm": -1, "embedding": -1, "reranking": -1, "tts": -1},
        "websocket_port": 9000,
    }
    return json.dumps(doc).encode()


class Instant(httpx.AsyncBaseTransport):
    """Answers every request at once with the body, and a space after it every other time.

    The same reading, never the same bytes twice in a row: the client parses
    each answer (it would return its previous reading for the same bytes).
    """

    def __init__(self, body: bytes) -> None:
        self.bodies = itertools.cycle([body, body + b" "])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = next(self.bodies)
        return httpx.Response(200, content=content, headers={"Content-Type": "application/json"})


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def measure(body: bytes, runs: int) -> dict[str, float]:
    """Medians (seconds) of ``json.loads`` and ``health()`` on ``body``, interleaved."""
    loads: list[float] = []
    health: list[float] = []

    async def bare() -> object:
        return json.loads(body)

    async with LemonadeClient(URL, transport=Instant(body), max_health_bytes=64 << 20) as client:
        await client.health()  # warm up
        for _ in range(runs):
            loads.append(await timed(bare))
            health.append(await timed(client.health))
    return {"loads": statistics.median(loads), "health": statistics.median(health)}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


async def main_async(sizes: Sequence[int], runs: int) -> None:
    print(
        "| rows | shape | body | json.loads | health() | health() / json.loads"
        " | parsing (health() - json.loads) | per row |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        for n in sizes:
            body = body_of(shape, n)
            gc.collect()
            r = await measure(body, runs)
            parse = r["health"] - r["loads"]
            print(
                f"| {n:,} | {shape} | {len(body) / 1e6:.2f} MB | {ms(r['loads'])}"
                f" | {ms(r['health'])} | {r['health'] / r['loads']:.2f}x | {ms(parse)}"
                f" | {parse / n * 1e6:.2f} µs |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--runs", type=int, default=21, help="repeats per median")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    print(f"slotfsm /health benchmark ({args.backend})")
    print()
    anyio.run(main_async, sorted(args.rows), args.runs, backend=args.backend)


if __name__ == "__main__":
    main()
