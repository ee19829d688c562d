"""Scale benchmark: what a Controller costs as the number of slots grows (issue 13).

Run by hand::

    python tests/bench/bench_scale.py [--slots 10 100 1000 10000] [--backend asyncio]

It asserts nothing; it prints, for each number of slots, the figure each goal
is about and, at the end, the goals with the ratios measured in this run:

1. a reconcile pass (``Controller.refresh``) over n loaded slots with nothing
   changed (the server answers the same bytes, so the reading is not parsed
   again), and one after a model was used (the reading is parsed) — next to
   reading and parsing ``/health`` alone with a new ``LemonadeClient``;
2. one load/unload cycle of a spare slot among n idle slots, and among n
   loaded ones (where each load's ``/health`` re-read lists n rows);
3. start-up and shutdown of a Controller with n slots, and the same with
   Python's cyclic garbage collector paused (the part it takes);
7. memory per idle slot, and the memory kept over many load/unload cycles
   once the transition ring and the bounded histories are full.

Figures are medians of ``--runs`` runs.

The server is :class:`InstantLemonade`, an in-process transport that answers
at once (no fake-server bookkeeping, no sockets), so the figures are the
controller's own.  Its ``/health`` rows are compact (about 60 bytes; real
rows are about 850, see ``bench_health.py``).  Every model is one small file
(shared by all registry entries), old enough for the fingerprint cache to
trust: after the first validation every load is a cache hit.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import anyio
import attrs
import httpx

from slotfsm import Controller, SlotConfig
from slotfsm.lemonade import LemonadeClient
from slotfsm.preload import FingerprintCache
from slotfsm.registry import ModelEntry
from slotfsm.testing.files import write_model

URL = "http://lemonade"
RING = 1024
"""The Controller's default transition ring: about four records per load/unload cycle."""
SPARE = "spare"
"""The slot that runs the load/unload cycles; it loads the model of the same name."""


class InstantLemonade(httpx.AsyncBaseTransport):
    """An in-process Lemonade that answers every request at once.

    It keeps the loaded names with a ``last_use`` each and re-encodes
    ``/health`` only after a change.  ``use(name)`` is an inference request.
    """

    def __init__(self) -> None:
        self.loaded: dict[str, int] = {}
        self.requests: Counter[str] = Counter()
        self._clock = itertools.count(1_000)
        self._health: bytes | None = None

    def use(self, name: str) -> None:
        """Bump ``name``'s ``last_use``, as an inference request would."""
        self.loaded[name] = next(self._clock)
        self._health = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        route = request.url.path.rsplit("/", 1)[-1]
        self.requests[route] += 1
        if route == "health":
            if self._health is None:
                rows = [
                    {"model_name": name, "type": "llm", "last_use": last_use}
                    for name, last_use in self.loaded.items()
                ]
                self._health = json.dumps({"status": "ok", "all_models_loaded": rows}).encode()
            return _json(200, self._health)
        if request.method == "GET":  # GET /models/{name}: a hub model, so nothing to compare
            body = {"id": route, "checkpoint": f"org/{route}:Q4_0", "recipe": "llamacpp"}
            return _json(200, json.dumps(body).encode())
        name = json.loads(request.content)["model_name"]
        if route == "load":
            self.use(name)
            return _json(200, json.dumps({"status": "success", "model_name": name}).encode())
        if route == "unload":
            if self.loaded.pop(name, None) is None:
                return _json(404, b'{"error": "Model not loaded"}')
            self._health = None
            return _json(200, b'{"status": "success"}')
        return _json(404, b'{"error": "no such route"}')


def _json(status: int, body: bytes) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})


def model_file(directory: str) -> ModelEntry:
    """Write one small model file and wait until the fingerprint cache may trust it.

    A file changed less than ``FingerprintCache.min_age`` seconds ago is
    hashed again on every validation; an unchanged file is what is measured.
    """
    entry = write_model(directory, "model", size=4096)
    time.sleep(FingerprintCache().min_age + 0.1)
    return entry


def registry(model: ModelEntry, names: Sequence[str]) -> list[ModelEntry]:
    """An entry per name, all naming the one ``model`` file."""
    return [attrs.evolve(model, name=name) for name in names]


def controller(
    transport: httpx.AsyncBaseTransport, entries: list[ModelEntry], slots: int
) -> Controller:
    """``slots`` slots ``s0``... plus the spare, never idle-unloaded during a run."""
    configs = [SlotConfig(f"s{i}", idle_timeout=3600) for i in range(slots)]
    configs.append(SlotConfig(SPARE, idle_timeout=3600))
    return Controller(
        lemonade_url=URL,
        registry=entries,
        slots=configs,
        transport=transport,
        poll_interval=3600,
    )


async def median_of(runs: int, action: Callable[[], Awaitable[object]]) -> float:
    """The median wall time of ``runs`` awaited calls of ``action``, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        await action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def fill(ctl: Controller, slots: int, at_once: int = 200) -> None:
    """Load model ``m<i>`` into slot ``s<i>`` for every slot, ``at_once`` at a time."""
    limiter = anyio.CapacityLimiter(at_once)

    async def one(i: int) -> None:
        async with limiter:
            snap = await ctl.load(f"s{i}", f"m{i}")
            assert snap.model == f"m{i}", snap

    async with anyio.create_task_group() as group:
        for i in range(slots):
            group.start_soon(one, i)


async def measure(slots: int, model: ModelEntry, runs: int) -> dict[str, float]:
    """Every figure for ``slots`` slots (seconds)."""
    names = [f"m{i}" for i in range(slots)] + [SPARE]
    entries = registry(model, names)
    server = InstantLemonade()
    out: dict[str, float] = {}
    gc.collect()
    ctl = controller(server, entries, slots)
    start = time.perf_counter()
    await ctl.__aenter__()
    out["start"] = time.perf_counter() - start
    try:

        async def cycle() -> None:
            await ctl.load(SPARE, SPARE)
            await ctl.unload(SPARE)

        await cycle()  # the first validation hashes
        out["cycle_idle"] = await median_of(runs, cycle)
        start = time.perf_counter()
        await fill(ctl, slots)
        out["fill"] = time.perf_counter() - start
        await ctl.refresh()  # every slot has now seen its model once
        out["pass"] = await median_of(runs, ctl.refresh)

        async def read_and_parse() -> None:  # a new client: nothing to compare with
            async with LemonadeClient(URL, transport=server) as client:
                await client.health()

        out["health"] = await median_of(runs, read_and_parse)
        server.use("m0")
        out["pass_one_used"] = await median_of(1, ctl.refresh)
        out["cycle_loaded"] = await median_of(runs, cycle)
    finally:
        start = time.perf_counter()
        await ctl.__aexit__(None, None, None)
        out["stop"] = time.perf_counter() - start
    return out


async def start_and_stop_without_collector(slots: int, model: ModelEntry) -> tuple[float, float]:
    """Start-up and shutdown of ``slots`` slots with Python's cyclic collector paused."""
    ctl = controller(InstantLemonade(), registry(model, [SPARE]), slots)
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        await ctl.__aenter__()
        started = time.perf_counter() - start
        start = time.perf_counter()
        await ctl.__aexit__(None, None, None)
        return started, time.perf_counter() - start
    finally:
        gc.enable()


async def memory(slots: int, model: ModelEntry, cycles: int) -> tuple[float, tuple[int, int]]:
    """(bytes per idle slot of a running Controller, bytes kept over each half of ``cycles``).

    The cycles are counted after enough others to fill the transition ring
    and every bounded history, in two windows: a leak grows both, while a
    table of the event loop's that resizes once lands in one.
    """
    entries = registry(model, [SPARE])
    server = InstantLemonade()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        async with controller(server, entries, slots) as ctl:
            gc.collect()
            per_slot = (tracemalloc.get_traced_memory()[0] - before) / (slots + 1)

            async def cycles_then_memory(count: int) -> int:
                for _ in range(count):
                    await ctl.load(SPARE, SPARE)
                    await ctl.unload(SPARE)
                gc.collect()
                return tracemalloc.get_traced_memory()[0]

            await cycles_then_memory(RING // 2)
            marks = [await cycles_then_memory(1)]
            marks += [await cycles_then_memory(cycles // 2) for _ in range(2)]
            kept = (marks[1] - marks[0], marks[2] - marks[1])
    finally:
        tracemalloc.stop()
    return per_slot, kept


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


async def main_async(sizes: Sequence[int], runs: int, cycles: int) -> None:
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        model = model_file(directory)
        print(
            "| slots | start-up | load/unload cycle, others idle | fill (every slot loads)"
            " | pass, nothing changed | /health read and parsed alone | pass, one model used"
            " | load/unload cycle, others loaded | shutdown |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for n in sizes:
            r = results[n] = await measure(n, model, runs)
            print(
                f"| {n:,} | {ms(r['start'])} | {ms(r['cycle_idle'])} | {r['fill']:.2f} s"
                f" | {ms(r['pass'])} | {ms(r['health'])} | {ms(r['pass_one_used'])}"
                f" | {ms(r['cycle_loaded'])} | {ms(r['stop'])} |"
            )
        largest, smallest = max(sizes), min(sizes)
        quiet = await start_and_stop_without_collector(largest, model)
        per_slot, kept = await memory(largest, model, cycles)
    small, big = results[smallest], results[largest]
    print()
    print("| goal | measured | target |")
    print("|---|---|---|")
    for n, target in ((1000, "< 5 ms"), (10_000, "< 50 ms")):
        if n in results:
            r = results[n]
            print(
                f"| 1. pass over {n:,} loaded slots, nothing changed (the same /health bytes)"
                f" | {ms(r['pass'])} | {target} |"
            )
            print(
                f"| 1. the same with one model used (/health read and parsed:"
                f" {ms(r['health'])} alone) | {ms(r['pass_one_used'])} | {target} |"
            )
    ratio = big["cycle_idle"] / small["cycle_idle"]
    print(
        f"| 2. load/unload cycle among {largest:,} / among {smallest:,} slots"
        f" | {ratio:.2f}x ({ms(big['cycle_idle'])} / {ms(small['cycle_idle'])}) | ≤ 2x |"
    )
    ratio = big["cycle_loaded"] / small["cycle_loaded"]
    print(
        f"| 2. the same with every other slot loaded (each load re-reads a"
        f" {largest:,}-row /health) | {ratio:.2f}x ({ms(big['cycle_loaded'])}"
        f" / {ms(small['cycle_loaded'])}) | |"
    )
    print(f"| 3. start-up of {largest:,} slots | {big['start']:.3f} s | < 1 s |")
    print(f"| 3. shutdown of {largest:,} slots | {big['stop']:.3f} s | < 1 s |")
    print(
        f"| 3. the same with Python's cyclic collector paused | {quiet[0]:.3f} s"
        f" / {quiet[1]:.3f} s | |"
    )
    print(f"| 7. memory per idle slot ({largest:,} slots) | {per_slot / 1024:.1f} KiB | ≤ 16 KiB |")
    print(
        f"| 7. memory kept over {cycles:,} more load/unload cycles, in two halves"
        f" | {kept[0] / 1024:.1f} KiB then {kept[1] / 1024:.1f} KiB"
        f" (net {sum(kept) / cycles:.0f} B/cycle) | flat |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[10, 100, 1000, 10_000])
    parser.add_argument("--runs", type=int, default=15, help="repeats per median")
    parser.add_argument("--cycles", type=int, default=1000, help="soak cycles for memory")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    print(f"slotfsm scale benchmark ({args.backend})")
    print()
    anyio.run(main_async, sorted(args.slots), args.runs, args.cycles, backend=args.backend)


if __name__ == "__main__":
    main()
