"""The command storm shared by ``test_commands.py`` and ``test_soak.py``.

A *world* is a set of slots, each with its own model files (so every request
in the fake's log names the slot that sent it) and an in-process
``FakeLemonade``.  A *storm* runs random ``load`` / ``unload`` / ``reset``
commands from many concurrent callers against one Controller, and injects
server faults (hangs, failed starts with and without the evict-all, evict-all
from outside, restarts, ``/health`` faults, slow starts) and file faults (a
file rewritten sound, corrupt, truncated, without magic, or deleted, by an
atomic rename) while it runs.  Afterwards :meth:`Storm.problems` lists every
broken promise, checked against the fake's request log, a recording transport,
a spy on pre-load validation and the transition stream:

* at most one ``/load`` in flight per slot that the slot still waits for:
  every other one in flight was given up on (timed out, cancelled) and is
  counted as an arrival in the controller's ledger;
* no ``/load`` unless the slot's latest validation passed, for that model,
  and licensed no other ``/load`` (so: none after a failed validation, and
  no retry); no ``/load`` at all of a file that is always broken;
* no ``/unload`` without a model name;
* every command answered exactly once, with a settled snapshot of the right
  shape for what was asked;
* at most one ``/load`` per entry into ``loading`` (none sent that no
  load command asked for);
* the ledger's own invariants after every command;
* after the storm (hangs released, faults cleared, one ``refresh``, the
  slots' own work done): every slot settled, and the server holds exactly
  the models the ``loaded`` slots hold plus the ledger's pending clean-ups;
  once those are unloaded, exactly the models the ``loaded`` slots hold.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
from oracle import check_quiescent, check_step

from slotfsm import Controller, ModelEntry, PreloadError, SlotConfig, SlotSnapshot, SlotState
from slotfsm.errors import Failure
from slotfsm.ledger import Ledger
from slotfsm.preload import NeedsHash
from slotfsm.snapshot import SlotTransition
from slotfsm.testing import FakeLemonade, FakeModel, HealthFault, Switch
from slotfsm.testing.files import Flaw, write_model

# -- the models of one slot ------------------------------------------------------------

SOUND = ("good", "good2")
"""Sound files the server knows."""
FLIP = "flip"
"""Sound at first; the storm rewrites it sound or broken while it runs."""
GONE = "gone"
"""A sound file the server does not know: ``/load`` answers 404."""
BAD: dict[str, tuple[Flaw, PreloadError]] = {
    "corrupt": (Flaw.SHA256, PreloadError.SHA256_MISMATCH),
    "truncated": (Flaw.TRUNCATED, PreloadError.SIZE_MISMATCH),
    "missing": (Flaw.MISSING, PreloadError.FILE_MISSING),
    "magic": (Flaw.MAGIC, PreloadError.BAD_MAGIC),
}
"""Files that are always broken, and the failure validation must report."""
KINDS = (*SOUND, FLIP, GONE, *BAD)
KIND_WEIGHTS = (6, 4, 3, 1, 1, 1, 1, 1)
OPS = ("load", "unload", "reset")
OP_WEIGHTS = (6, 3, 1)
FLIP_FLAWS = (None, None, Flaw.SHA256, Flaw.TRUNCATED, Flaw.MAGIC, Flaw.MISSING)

SETTLED_LOAD_FAILURES = frozenset({PreloadError.LOAD_FAILED, PreloadError.LOAD_TIMEOUT})


def model_name(slot: str, kind: str) -> str:
    return f"{slot}-{kind}"


def slot_of(model: str) -> str:
    return model.split("-", 1)[0]


def kind_of(model: str) -> str:
    return model.split("-", 1)[1]


# -- settings ---------------------------------------------------------------------------


@attrs.frozen
class StormSettings:
    """How big and how rough a storm is; times are seconds on the test's clock."""

    slots: int = 24
    commands: int = 2400
    callers: int = 40
    load_timeouts: tuple[float, ...] = (5.0, 2.0)
    """Given to the slots in turn: a short one times out waiting behind a slow load."""
    idle_timeout: float | None = 60.0
    poll_interval: float = 15.0
    http_timeout: float = 3.0
    chaos: float = 0.06
    """Probability that a caller injects one fault before a command."""
    think: float = 0.05
    """Probability that a caller pauses before a command..."""
    think_time: float = 2.0
    """...for up to this long."""
    bound: float = 3600.0
    """Callers still waiting after this long have lost their command."""
    delays: tuple[float, ...] = (0.0, 0.0, 0.5, 2.0, 4.0)
    """Backend start times the fault injector picks from (``delaying``)."""
    max_hung: int = 2


# -- the world --------------------------------------------------------------------------


class World:
    """The slots, their model files, the fake server and the fault injector."""

    def __init__(self, directory: Path, settings: StormSettings, rng: random.Random) -> None:
        self.directory = directory
        self.scratch = directory / "scratch"
        self.scratch.mkdir(exist_ok=True)
        self.settings = settings
        self.rng = rng
        self.slots = tuple(f"s{i:02d}" for i in range(settings.slots))
        self.fake = FakeLemonade(max_models={"llm": -1})
        self.entries: list[ModelEntry] = []
        for slot in self.slots:
            for kind in KINDS:
                name = model_name(slot, kind)
                flaw = BAD[kind][0] if kind in BAD else None
                self.entries.append(write_model(directory, name, flaw=flaw))
                if kind != GONE:
                    self.fake.add_model(FakeModel.for_file(name, self.entries[-1].path))
        self.hung: dict[str, Switch[object]] = {}
        self.failing: dict[str, list[Switch[object]]] = {}
        self.switches: dict[str, Switch[object]] = {}
        """The one health fault and each model's start delay: a new one replaces the old."""
        self.injected: Counter[str] = Counter()

    def configs(self) -> list[SlotConfig]:
        s = self.settings
        return [
            SlotConfig(
                slot,
                load_timeout=s.load_timeouts[i % len(s.load_timeouts)],
                idle_timeout=s.idle_timeout,
            )
            for i, slot in enumerate(self.slots)
        ]

    def controller(self, transport: httpx.AsyncBaseTransport) -> Controller:
        return Controller(
            lemonade_url="http://lemonade",
            registry=self.entries,
            slots=self.configs(),
            transport=transport,
            poll_interval=self.settings.poll_interval,
            http_timeout=self.settings.http_timeout,
        )

    def random_command(self) -> tuple[str, str, str]:
        slot = self.rng.choice(self.slots)
        op = self.rng.choices(OPS, OP_WEIGHTS)[0]
        kind = self.rng.choices(KINDS, KIND_WEIGHTS)[0]
        return slot, op, kind

    # -- faults ----------------------------------------------------------------------

    def inject(self) -> None:
        """One random server or file fault (or the repair of an earlier one)."""
        rng, fake = self.rng, self.fake
        action = rng.choices(
            [
                "hang",
                "release",
                "crash",
                "crash_retry_ok",
                "not_found",
                "heal",
                "evict_all",
                "restart",
                "health",
                "delay",
                "file",
                "fail_unload",
                "hang_unload",
                "drop_reply",
            ],
            [3, 4, 2, 1, 2, 7, 1, 1, 3, 2, 6, 2, 1, 1],
        )[0]
        model = model_name(rng.choice(self.slots), rng.choice((*SOUND, FLIP)))
        if action == "hang":
            if len(self.hung) >= self.settings.max_hung:
                return
            model = model_name(rng.choice(self.slots), "good")  # the most loaded kind
            if model not in self.hung:
                self.hung[model] = fake.hanging(model)
        elif action == "release":
            if not self.hung:
                return
            victim = rng.choice(sorted(self.hung))
            self.hung.pop(victim).off()
        elif action == "crash":
            self.fault(model, fake.failing(model, "llama-server failed to start"))  # evict-all
        elif action == "crash_retry_ok":
            self.fault(
                model, fake.failing(model, "llama-server failed to start", retry_succeeds=True)
            )
        elif action == "not_found":
            self.fault(model, fake.failing(model, f"GGUF file not found: /models/{model}.gguf"))
        elif action == "fail_unload":
            self.fault(model, fake.failing_unload(model))  # a 500, and the model stays loaded
        elif action == "hang_unload":
            self.fault(model, fake.hanging_unload(model))  # no answer: http_timeout ends it
        elif action == "drop_reply":
            self.fault(model, fake.dropping_replies(model))  # it acts, the answer is lost
        elif action == "heal":
            if not self.failing:
                return
            self.heal(rng.choice(sorted(self.failing)))
        elif action == "evict_all":
            fake.evict_all()
        elif action == "restart":
            fake.restart()
        elif action == "health":
            fault = rng.choice([*HealthFault, None, None, None])
            self.switch("health", fake.health_fault(fault) if fault is not None else None)
        elif action == "delay":
            self.switch(f"delay {model}", fake.delaying(model, rng.choice(self.settings.delays)))
        else:
            self.rewrite_flip(rng.choice(self.slots), rng.choice(FLIP_FLAWS))
        self.injected[action] += 1

    def rewrite_flip(self, slot: str, flaw: Flaw | None) -> None:
        """Replace a slot's ``flip`` file, sound or broken, in one atomic rename."""
        name = model_name(slot, FLIP)
        target = self.directory / f"{name}.gguf"
        if flaw is Flaw.MISSING:
            target.unlink(missing_ok=True)
            return
        written = write_model(self.scratch, name, flaw=flaw)
        os.replace(written.path, target)

    def fault(self, model: str, switch: Switch[object]) -> None:
        """Remember a failure switch of ``model`` until it heals."""
        self.failing.setdefault(model, []).append(switch)

    def switch(self, key: str, switch: Switch[object] | None) -> None:
        """Turn off the previous switch under ``key`` and keep ``switch`` there instead."""
        previous = self.switches.pop(key, None)
        if previous is not None:
            previous.off()
        if switch is not None:
            self.switches[key] = switch

    def heal(self, model: str) -> None:
        """Clear every failure switch of ``model``."""
        for switch in self.failing.pop(model, []):
            switch.off()

    def calm(self) -> None:
        """Release every hang and clear every server fault (file faults and delays stay)."""
        for model in sorted(self.hung):
            self.hung.pop(model).off()
        for model in sorted(self.failing):
            self.heal(model)
        self.switch("health", None)


# -- what the test sees of the traffic ----------------------------------------------------


class Ticker:
    """One global order for events seen by the transport and the validation spy."""

    def __init__(self) -> None:
        self._next = itertools.count()

    def __call__(self) -> int:
        return next(self._next)


class Recorder(httpx.AsyncBaseTransport):
    """Between the controller and the fake: ``/load`` in flight per slot, bodies checked."""

    def __init__(self, inner: httpx.AsyncBaseTransport, tick: Ticker) -> None:
        self.inner = inner
        self.tick = tick
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.loads: list[tuple[int, str]] = []  # (tick, model) at the moment it was sent
        self.problems: list[str] = []
        self.ledger: Ledger | None = None
        """The running controller's ledger: which loads in flight its slots gave up on."""

    def _waited_for(self, slot: str) -> int:
        """``/load`` requests of ``slot`` in flight that the slot has not given up on."""
        entries = self.ledger.entries().values() if self.ledger is not None else ()
        abandoned = sum(e.arrivals for e in entries if slot_of(e.name) == slot)
        return self.in_flight[slot] - abandoned

    def reset(self) -> None:
        self.peak.clear()
        self.loads.clear()
        self.problems.clear()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/unload"):
            body = _json_or_none(request.content)
            name = body.get("model_name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name.strip():
                self.problems.append(f"/unload without a model name: {request.content!r}")
        if not path.endswith("/load"):
            return await self.inner.handle_async_request(request)
        model = json.loads(request.content)["model_name"]
        slot = slot_of(model)
        self.loads.append((self.tick(), model))
        self.in_flight[slot] += 1
        self.peak[slot] = max(self.peak[slot], self._waited_for(slot))
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight[slot] -= 1


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


class ValidationSpy:
    """Wraps the controller's pre-load validation, both ways, and records every verdict.

    ``__call__`` stands for :func:`slotfsm.preload.validate`; :meth:`cached`
    for :func:`slotfsm.preload.validate_cached` (the inline answer of a cache
    hit, recorded unless it says a hash is needed).
    """

    def __init__(
        self,
        real: Callable[..., Awaitable[Failure | None]],
        real_cached: Callable[..., Failure | NeedsHash | None],
        tick: Ticker,
    ) -> None:
        self.real = real
        self.real_cached = real_cached
        self.tick = tick
        self.verdicts: list[tuple[int, str, Failure | None]] = []

    async def __call__(self, entry: ModelEntry, **options: Any) -> Failure | None:
        failure = await self.real(entry, **options)
        self.verdicts.append((self.tick(), entry.name, failure))
        return failure

    def cached(self, entry: ModelEntry, **options: Any) -> Failure | NeedsHash | None:
        known = self.real_cached(entry, **options)
        if not isinstance(known, NeedsHash):
            self.verdicts.append((self.tick(), entry.name, known))
        return known


# -- the storm --------------------------------------------------------------------------


class Storm:
    """Runs batches of random commands against one controller and checks every promise."""

    def __init__(self, world: World, spy: ValidationSpy, seed: int) -> None:
        self.world = world
        self.ours = {e.name for e in world.entries}
        self.spy = spy
        self.seed = seed
        self.recorder = Recorder(world.fake.transport(), spy.tick)
        self.problems: list[str] = []
        self.commands = 0
        self.outcomes: Counter[str] = Counter()
        self.loads_sent = 0
        self.strays_seen = 0
        self.elapsed = 0.0
        self.strays: set[str] = set()  # every model a slot named among its clean-ups
        self.requests = 0
        self.transitions = 0

    def controller(self) -> Controller:
        ctl = self.world.controller(self.recorder)
        self.recorder.ledger = ctl.ledger
        return ctl

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    async def batch(self, ctl: Controller, commands: int) -> None:
        """``commands`` random commands from the callers, faults injected; then check it all.

        Afterwards the server is calm again (no hang, no failure switch, no
        ``/health`` fault), every slot has settled and the request log has
        been checked; the fake's log, the recorder and the spy start over.
        """
        world, settings = self.world, self.world.settings
        program = [(i, *world.random_command()) for i in range(commands)]
        answers: Counter[int] = Counter()
        stream = ctl.transitions(buffer=1_000_000)

        async def caller(mine: list[tuple[int, str, str, str]]) -> None:
            for index, slot, op, kind in mine:
                if world.rng.random() < settings.chaos:
                    world.inject()
                if world.rng.random() < settings.think:
                    await anyio.sleep(world.rng.uniform(0, settings.think_time))
                snap = await self._send(ctl, slot, op, kind)
                answers[index] += 1
                self._check_answer(index, slot, op, kind, snap)
                self._note_strays(ctl)

        started = anyio.current_time()
        with anyio.move_on_after(settings.bound):
            async with anyio.create_task_group() as tg:
                for n in range(settings.callers):
                    tg.start_soon(caller, program[n :: settings.callers])
        self.elapsed += anyio.current_time() - started
        self.commands += commands

        lost = [i for i in range(commands) if answers[i] == 0]
        twice = [i for i, n in answers.items() if n > 1]
        if lost or twice or sum(answers.values()) != commands:
            self.problem(f"commands lost {lost[:10]} or answered twice {twice[:10]}")

        world.calm()
        await self.reconcile(ctl)
        stream.close()
        records = [record async for record in stream]
        if stream.dropped:
            self.problem(f"the transition stream dropped {stream.dropped} records")
        self._check_log(records)
        self._start_over()

    def _note_strays(self, ctl: Controller) -> None:
        """Check the shared oracle, and remember which models the slots name as clean-ups."""
        try:
            check_step(ctl, self.world.fake, self.ours)
        except AssertionError as exc:
            self.problem(f"ownership invariant broken: {exc}")
        for snap in ctl.snapshots().values():
            self.strays.update(snap.cleanups)

    async def _send(self, ctl: Controller, slot: str, op: str, kind: str) -> SlotSnapshot:
        if op == "load":
            return await ctl.load(slot, model_name(slot, kind))
        if op == "unload":
            return await ctl.unload(slot)
        return await ctl.reset(slot)

    def _check_answer(self, index: int, slot: str, op: str, kind: str, snap: SlotSnapshot) -> None:
        """The settled snapshot a command returns has the shape its command promises."""
        what = f"command {index} {op}({slot!r}{f', {kind!r}' if op == 'load' else ''})"
        err = snap.error
        self.outcomes[f"{op} -> {snap.state}" + (f" {err.kind.name}" if err else "")] += 1
        if snap.slot != slot or not snap.state.settled:
            self.problem(f"{what}: answered with {snap!r}")
            return
        if (snap.state is SlotState.LOADED) != (snap.model is not None):
            self.problem(f"{what}: state {snap.state} with model {snap.model!r}")
        if snap.model is not None and slot_of(snap.model) != slot:
            self.problem(f"{what}: slot holds another slot's model {snap.model!r}")
        if op == "unload":
            # A failed unload (or one whose answer was lost) keeps the model, owned.
            failed = snap.state is SlotState.LOADED and snap.model is not None
            failed = failed and err is not None and err.kind is PreloadError.UNLOAD_FAILED
            if not (snap.state is SlotState.IDLE and err is None) and not failed:
                self.problem(
                    f"{what}: expected idle, or loaded with UNLOAD_FAILED, got {_brief(snap)}"
                )
        elif op == "reset":
            if snap.state not in (SlotState.IDLE, SlotState.LOADED) or err is not None:
                self.problem(f"{what}: expected the error cleared, got {snap.state} {err}")
        else:
            model = model_name(slot, kind)
            if kind in BAD:
                expected = BAD[kind][1]
                if err is None or err.kind is not expected or snap.model == model:
                    self.problem(f"{what}: expected {expected.name}, got {snap.state} {err}")
            elif snap.state is SlotState.IDLE:
                # loaded, then evicted by the server before the slot settled
                if err is None or err.kind is not PreloadError.EVICTED or err.model != model:
                    self.problem(f"{what}: ended idle with {err}")
            elif snap.state is SlotState.LOADED and err is None:
                if snap.model != model:
                    self.problem(f"{what}: loaded {snap.model!r} without an error")
                if kind == GONE:
                    self.problem(f"{what}: a model the server does not know is loaded")
            elif snap.state is SlotState.LOADED:
                assert err is not None
                # A swap that stopped before its old model was unloaded keeps the old
                # model, owned: its unload failed, or the timer fired (or a cancel came)
                # before that unload went out.
                not_sent = f"{model!r} was not sent, {snap.model!r} is kept"
                kept = snap.model != model and (
                    (err.kind is PreloadError.UNLOAD_FAILED and not_sent in err.message)
                    or (err.kind is PreloadError.LOAD_TIMEOUT and "nothing sent" in err.message)
                )
                if not (kind == FLIP and err.kind.is_validation) and not kept:
                    self.problem(f"{what}: kept a model with {err}")
            elif err is None or not (
                err.kind in SETTLED_LOAD_FAILURES or (kind == FLIP and err.kind.is_validation)
            ):
                self.problem(f"{what}: ended {snap.state} with {err}")

    async def reconcile(self, ctl: Controller) -> None:
        """On a calm server, after one ``refresh``, the slots and the ledger tell the truth.

        The server holds exactly the ``loaded`` slots' models plus what the
        ledger owes (pending clean-ups, which the slots name as ``cleanups``);
        then the shared oracle's quiescence (tests/oracle.py): one reading
        cleans up, the next finds nothing owed.
        """
        fake = self.world.fake
        with anyio.fail_after(3600):  # the server finishes every load a slot gave up on
            while fake.loads_in_flight:
                await fake.wait_changed()
        await self._refresh(ctl)
        owed = set(ctl.ledger.owed())
        named = {m for s in ctl.snapshots().values() for m in s.cleanups}
        if not named <= owed:
            self.problem(f"slots name clean-ups {sorted(named - owed)} the ledger does not owe")
        self._compare(ctl, tolerated=owed)
        try:  # the shared oracle: one reading cleans up, the next finds nothing owed
            await check_quiescent(ctl, fake, self.ours)
        except AssertionError as exc:
            self.problem(f"not quiescent on a calm server: {exc}")
        for name, snap in ctl.snapshots().items():
            if not snap.state.settled:
                self.problem(f"slot {name} did not settle: {_brief(snap)}")

    async def _refresh(self, ctl: Controller) -> None:
        """``refresh``, then wait until every slot has settled and finished its own work."""
        with anyio.fail_after(600):
            async with ctl.transitions() as changes:
                if await ctl.refresh() is None:
                    self.problem("refresh on a calm server read nothing")
                while not all(s.state.settled for s in ctl.snapshots().values()):
                    await changes.__anext__()  # an idle unload the refresh started
            # A settled slot may still have work running: a clean-up the reading started.
            await anyio.wait_all_tasks_blocked()

    def _compare(self, ctl: Controller, tolerated: set[str]) -> None:
        snaps = ctl.snapshots()
        held = {s.model for s in snaps.values() if s.state is SlotState.LOADED}
        on_server = set(self.world.fake.loaded_models())
        claimed_but_gone = sorted(held - on_server)
        unexplained = sorted(on_server - held - tolerated)
        if claimed_but_gone or unexplained:
            details = {m: _brief(snaps[slot_of(m)]) for m in claimed_but_gone + unexplained}
            self.problem(
                f"after refresh, slots claim {claimed_but_gone} the server lacks, and the server"
                f" holds {unexplained} that no slot holds and the ledger does not owe: {details}"
            )

    def _check_log(self, records: list[SlotTransition]) -> None:
        fake, recorder = self.world.fake, self.recorder
        log = fake.requests
        loads = [r for r in log if r.route == "load"]
        self.requests += len(log)
        self.transitions += len(records)
        self.loads_sent += len(loads)
        self.strays_seen += sum(1 for t in records if t.trigger == "cleanup")
        problems = list(recorder.problems)
        # at most one /load in flight per slot that the slot still waits for (the others
        # in flight were given up on, and the ledger counts each as an arrival)
        problems += [
            f"{n} /load in flight at once that {s} waits for"
            for s, n in recorder.peak.items()
            if n > 1
        ]
        # no /load of a file that is always broken
        problems += [
            f"/load of {r.body['model_name']} whose file is broken"
            for r in loads
            if kind_of(r.body["model_name"]) in BAD
        ]
        # every /load licensed by the slot's latest validation: passed, same model, used once
        timeline = sorted(
            [(tick, "validated", name, failure) for tick, name, failure in self.spy.verdicts]
            + [(tick, "load", name, None) for tick, name in recorder.loads],
            key=lambda item: item[0],
        )
        licence: dict[str, tuple[str, Failure | None]] = {}
        for _, what, name, failure in timeline:
            if what == "validated":
                licence[slot_of(name)] = (name, failure)
                continue
            granted = licence.pop(slot_of(name), None)
            if granted is None or granted[0] != name or granted[1] is not None:
                problems.append(f"/load of {name} not licensed by a passed validation: {granted}")
        # no /unload without a model name, as the server saw it
        for r in fake.unloads():
            name = r.body.get("model_name") if isinstance(r.body, dict) else None
            if not isinstance(name, str) or not name.strip():
                problems.append(f"the server got an /unload without a name: {r.raw_body!r}")
        # one /load per entry into `loading`: nothing retried behind a caller's back
        entered = Counter(
            t.slot
            for t in records
            if t.source is not SlotState.LOADING and t.dest is SlotState.LOADING
        )
        sent = Counter(slot_of(r.body["model_name"]) for r in loads)
        more = {s: (entered[s], n) for s, n in sent.items() if n > entered[s]}
        if more:
            problems.append(f"more /load sent than entries into loading: {more}")
        for text in problems:
            self.problem(text)

    def _start_over(self) -> None:
        """Forget the checked traffic, so that a long run keeps only what it still needs."""
        fake = self.world.fake
        # The testing kit keeps every request; a soak must not.
        if fake.loads_in_flight == 0 and all(r.done_at is not None for r in fake.requests):
            fake.clear_log()
        else:
            pending = [(r.route, r.body) for r in fake.requests if r.done_at is None]
            self.problem(f"requests still in flight on a calm, settled controller: {pending[:5]}")
        self.recorder.reset()
        self.spy.verdicts.clear()

    def report(self) -> str:
        fake = self.world.fake
        return (
            f"seed={self.seed} commands={self.commands} loads_sent={self.loads_sent}"
            f" evict_all={fake.evict_all_count} clock={self.elapsed:.0f}s"
            f" strays_named={len(self.strays)} strays_cleaned_up={self.strays_seen}"
            f" faults={dict(self.world.injected)}"
        )


def _brief(snap: SlotSnapshot) -> str:
    return (
        f"{snap.state} model={snap.model} target={snap.target} leaving={snap.leaving}"
        f" cleanups={snap.cleanups}"
        f" error={snap.error}"
    )
