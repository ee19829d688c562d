"""Overhead benchmark: one slot's load/unload cycle against the HTTP it must do (issue 13, goal 5).

Run by hand::

    python tests/bench/bench_overhead.py [--cycles 2000] [--backend asyncio]

It asserts nothing.  In one run, on the same instant in-process transport
(:class:`bench_scale.InstantLemonade`), it times:

* a load/unload cycle of one slot through the Controller, the model file
  unchanged and already in the fingerprint cache: validation (a ``stat``),
  ``POST /load``, the ``GET /health`` re-read, ``POST /unload``, and
  everything the controller does around them;
* the same three requests made with a bare ``httpx.AsyncClient`` (the
  reference: the least any client could do);
* the same three requests through slotfsm's ``LemonadeClient`` (its share:
  bounded body reads, timeouts, strict parsing);

and prints the ratios next to the goal (≤ 1.5x), with how many times a
cycle hopped to a worker thread (goal: a cache hit never does).  Batches of
the three are interleaved and each figure is the median over the batches, so
that the machine's other work weighs on all three alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx
from bench_scale import URL, InstantLemonade, model_file, registry

from slotfsm import Controller, SlotConfig
from slotfsm.lemonade import LemonadeClient

MODEL = "m"


class ThreadHops:
    """Counts ``anyio.to_thread.run_sync`` calls while installed."""

    def __init__(self) -> None:
        self.count = 0
        self._original = anyio.to_thread.run_sync

    def __enter__(self) -> ThreadHops:
        original = self._original

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        anyio.to_thread.run_sync = counted  # type: ignore[assignment]
        return self

    def __exit__(self, *_: object) -> None:
        anyio.to_thread.run_sync = self._original


async def per_cycle(cycles: int, cycle: Callable[[], Awaitable[None]]) -> float:
    """Seconds per cycle over ``cycles`` cycles run back to back."""
    start = time.perf_counter()
    for _ in range(cycles):
        await cycle()
    return (time.perf_counter() - start) / cycles


async def main_async(cycles: int, batches: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        entries = registry(model_file(directory), [MODEL])
        server = InstantLemonade()
        async with (
            Controller(
                lemonade_url=URL,
                registry=entries,
                slots=[SlotConfig("s")],
                transport=server,
                poll_interval=3600,
            ) as ctl,
            httpx.AsyncClient(transport=server, base_url=URL) as bare,
            LemonadeClient(URL, transport=server) as client,
        ):

            async def controller_cycle() -> None:
                await ctl.load("s", MODEL)
                await ctl.unload("s")

            async def bare_cycle() -> None:
                (await bare.post("/api/v1/load", json={"model_name": MODEL})).json()
                (await bare.get("/api/v1/health")).json()
                (await bare.post("/api/v1/unload", json={"model_name": MODEL})).json()

            async def client_cycle() -> None:
                await client.load(MODEL)
                await client.health()
                await client.unload(MODEL)

            await controller_cycle()  # the first validation hashes
            times: dict[str, list[float]] = {"controller": [], "bare": [], "client": []}
            cycle_of = {"controller": controller_cycle, "bare": bare_cycle, "client": client_cycle}
            per_batch = max(1, cycles // batches)
            with ThreadHops() as hops:
                for _ in range(batches):
                    for name, cycle in cycle_of.items():
                        times[name].append(await per_cycle(per_batch, cycle))
                controller_hops = hops.count  # the bare cycles never hop
    med = {name: statistics.median(values) for name, values in times.items()}
    bare_us = med["bare"] * 1e6
    print("| measure | per cycle | ratio to bare httpx | goal |")
    print("|---|---|---|---|")
    print(
        f"| bare `httpx.AsyncClient`: POST /load, GET /health, POST /unload | {bare_us:.0f} µs"
        " | 1.00x | |"
    )
    print(
        f"| the same through `LemonadeClient` | {med['client'] * 1e6:.0f} µs"
        f" | {med['client'] / med['bare']:.2f}x | |"
    )
    print(
        f"| one slot's load/unload through the Controller (cached file) | "
        f"{med['controller'] * 1e6:.0f} µs | {med['controller'] / med['bare']:.2f}x | ≤ 1.5x |"
    )
    print(
        f"| worker-thread hops per Controller cycle (cache hits) |"
        f" {controller_hops / (per_batch * batches):.2f} | | 0 |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3000, help="cycles of each kind")
    parser.add_argument("--batches", type=int, default=15, help="interleaved batches")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    print(f"slotfsm overhead benchmark ({args.backend}, {args.cycles:,} cycles of each kind)")
    print()
    anyio.run(main_async, args.cycles, args.batches, backend=args.backend)


if __name__ == "__main__":
    main()
