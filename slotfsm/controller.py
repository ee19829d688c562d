"""The controller: the one object an application embeds.

It owns the HTTP client, one actor per slot, the idle watcher and the
optional state file, all inside one task group.  Its methods turn calls into
commands for the slot's actor and wait for the slot to settle::

    async with Controller(lemonade_url=url, registry=registry, slots=slots) as ctl:
        snap = await ctl.load("chat", "qwen3-0.6b")
        if snap.error is not None:
            ...  # validation refused it, the load failed or timed out

A failed load is a state, not an exception; misuse (an unknown slot or model
name) raises.  Leaving the ``async with`` block cancels every slot's work —
hashing and hung loads included — and leaves the models that are loaded on
the server where they are; with a state file, the next controller resumes them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Self

import anyio
import httpx
from anyio.abc import TaskGroup

from slotfsm.actor import SlotActor
from slotfsm.config import SlotConfig
from slotfsm.errors import (
    ConfigError,
    Failure,
    ModelInUseError,
    SlotfsmError,
    UnknownSlotError,
)
from slotfsm.events import Load, Observed, Reset, Unload, UseChanged
from slotfsm.idle import IdleWatcher
from slotfsm.lemonade import Health, LemonadeClient
from slotfsm.preload import FingerprintCache, HashPolicy, validate
from slotfsm.registry import ModelEntry, Registry
from slotfsm.rules import Rulebook, SlotData, SlotState
from slotfsm.snapshot import SlotSnapshot, SlotTransition
from slotfsm.statefile import read_assignments, write_assignments
from slotfsm.stream import TransitionHub, TransitionStream

__all__ = ["Controller"]

logger = logging.getLogger("slotfsm")


class Controller:
    """Runs every configured slot against one Lemonade Server.

    ``lemonade_url`` is the server root (requests go to ``/api/v1/...``);
    ``registry`` names the model files; ``slots`` configures each slot;
    ``poll_interval`` is the idle watcher's cadence (one ``/health`` per
    interval for all slots).  ``api_key`` is sent as a bearer token and shown
    nowhere.  ``hash_policy`` chooses whether an unchanged file is hashed
    again (see :mod:`slotfsm.preload`).  ``state_path`` keeps each slot's
    model across restarts.  ``transport`` replaces the HTTP transport (the
    testing kit's in-process fake uses it).
    """

    def __init__(
        self,
        *,
        lemonade_url: str,
        registry: Registry | Iterable[ModelEntry],
        slots: Iterable[SlotConfig],
        poll_interval: float = 30.0,
        api_key: str | None = None,
        hash_policy: HashPolicy = HashPolicy.FINGERPRINT,
        state_path: str | os.PathLike[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_timeout: float = 30.0,
        history: int = 32,
    ) -> None:
        self._registry = registry if isinstance(registry, Registry) else Registry(registry)
        self._configs: dict[str, SlotConfig] = {}
        for config in slots:
            if not isinstance(config, SlotConfig):
                raise ConfigError(f"slots must be SlotConfig values, got {type(config).__name__}")
            if config.name in self._configs:
                raise ConfigError(f"duplicate slot name {config.name!r}")
            self._configs[config.name] = config
        if not self._configs:
            raise ConfigError("a controller needs at least one slot")
        if history < 1:
            raise ConfigError(f"history must be >= 1, got {history}")
        self._client = LemonadeClient(
            lemonade_url, api_key=api_key, transport=transport, timeout=http_timeout
        )
        try:
            self._hash_policy = HashPolicy(hash_policy)
        except ValueError:
            choices = ", ".join(p.value for p in HashPolicy)
            raise ConfigError(
                f"hash_policy must be one of {choices}, got {hash_policy!r}"
            ) from None
        self._cache = FingerprintCache()
        self._state_path = state_path
        self._history = history
        self._rulebook = Rulebook()
        self._hub = TransitionHub()
        self._sequence = itertools.count(1).__next__
        self._actors: dict[str, SlotActor] = {}
        self._watcher = IdleWatcher(
            self._client, self._tell_every_slot, self._sequence, poll_interval
        )
        self._task_group: TaskGroup | None = None
        self._started = False
        self._loading: Counter[tuple[str, str]] = Counter()  # (slot, model) of load() calls
        self._state_dirty: anyio.Event | None = None
        self._written: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Controller({self._client.base_url!r}, slots={list(self._configs)})"

    # -- lifetime -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._started:
            raise SlotfsmError("a Controller runs once; create a new one to run again")
        self._started = True
        resumed, recorded = await self._resume()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            for name, config in self._configs.items():
                state, data = resumed.get(name, (SlotState.IDLE, None))
                actor = SlotActor(
                    config,
                    self._rulebook,
                    client=self._client,
                    validate=self._validate,
                    reconcile=self._reconcile_after_load,
                    sequence=self._sequence,
                    publish=self._on_transition,
                    history=self._history,
                    state=state,
                    data=data,
                )
                self._actors[name] = actor
                await task_group.start(actor.run)
            if self._state_path is not None:
                self._written = recorded  # what is on disk: rewritten if it differs
                self._state_dirty = anyio.Event()
                self._state_dirty.set()
                task_group.start_soon(self._keep_state_file)
            await task_group.start(self._watcher.run)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        """Cancel every slot's work, say what stays loaded, and release everything."""
        task_group, self._task_group = self._task_group, None
        assert task_group is not None
        task_group.cancel_scope.cancel()
        try:
            # The block's own exception propagates as it is, never wrapped in a group.
            await task_group.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                held = self._assignments()
                if held:
                    logger.info(
                        "controller stopped; left on the server (loaded, or still loading): %s",
                        ", ".join(f"{slot}={model}" for slot, model in sorted(held.items())),
                    )
                if self._state_path is not None and held != self._written:
                    await self._write_state(held)
                self._hub.close()
                for actor in self._actors.values():
                    actor.detach()
                self._actors.clear()
                await self._client.aclose()

    # -- commands ----------------------------------------------------------------------

    async def load(self, slot: str, model: str) -> SlotSnapshot:
        """Validate ``model`` and load it into ``slot``; return the settled snapshot.

        The file is validated before the server hears of it (ADR-0007 §1); a
        failure leaves a held model loaded and sends nothing.  ``/load`` is
        sent once, bounded by the slot's ``load_timeout`` and never retried
        (ADR-0007 §3); every slot is reconciled with ``/health`` before this
        returns.  Check ``snap.model`` and ``snap.error``, not only ``state``.

        Cancelling the call only abandons the wait: the load goes on (or waits
        its turn behind the slot's current command) and settles as usual.
        Raises :class:`ModelInUseError` if another slot holds, is loading, or
        may still hold ``model``.
        """
        actor = self._actor(slot)
        entry = self._registry[model]
        self._claim(slot, model)
        self._loading[slot, model] += 1

        def answered() -> None:  # the claim lasts until the slot answers, not the caller
            self._loading[slot, model] -= 1
            if not self._loading[slot, model]:
                del self._loading[slot, model]

        return await actor.command(Load(entry), answered)

    async def unload(self, slot: str) -> SlotSnapshot:
        """Empty ``slot`` (``/unload`` with its model's name); return the settled snapshot."""
        return await self._actor(slot).command(Unload())

    async def reset(self, slot: str) -> SlotSnapshot:
        """Leave ``error`` for ``idle`` without touching the server."""
        return await self._actor(slot).command(Reset())

    def snapshot(self, slot: str) -> SlotSnapshot:
        """The slot as it is now, without waiting."""
        return self._actor(slot).snapshot

    def snapshots(self) -> dict[str, SlotSnapshot]:
        """Every slot as it is now."""
        return {name: self._actor(name).snapshot for name in self._configs}

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The configured slots, in configuration order."""
        return tuple(self._configs)

    @property
    def registry(self) -> Registry:
        """The models this controller can load."""
        return self._registry

    @property
    def idle_watcher(self) -> IdleWatcher:
        """The ``/health`` poller (its counters are useful in dashboards and tests)."""
        return self._watcher

    def transitions(self, buffer: int = 256) -> TransitionStream:
        """Every transition of every slot from now on, for dashboards.

        A slow reader never blocks a slot: past ``buffer`` unread records the
        oldest is dropped and counted in the stream's ``dropped``.
        """
        self._check_running()
        return self._hub.subscribe(buffer)

    @contextlib.asynccontextmanager
    async def in_use(self, slot: str) -> AsyncIterator[SlotSnapshot]:
        """Mark ``slot``'s model busy for the duration: it is never idle-unloaded meanwhile.

        Yields the slot's snapshot once the mark is in place (check ``state``
        and ``model`` before using the model).
        """
        actor = self._actor(slot)
        marked = anyio.Event()
        actor.tell(UseChanged(+1, anyio.current_time()), marked.set)
        try:
            await marked.wait()
            yield actor.snapshot
        finally:
            released = anyio.Event()
            try:
                actor.tell(UseChanged(-1, anyio.current_time()), released.set)
            except SlotfsmError:  # the controller closed meanwhile: nothing to release
                released.set()
            with anyio.CancelScope(shield=True):
                await released.wait()

    async def refresh(self) -> Health | None:
        """Read ``/health`` now and reconcile every slot with it (as a poll does)."""
        self._check_running()
        return await self._watcher.observe()

    # -- internals --------------------------------------------------------------------

    def _actor(self, slot: str) -> SlotActor:
        if slot not in self._configs:
            known = ", ".join(repr(n) for n in self._configs)
            raise UnknownSlotError(f"no slot named {slot!r} (slots: {known})")
        self._check_running()
        return self._actors[slot]

    def _check_running(self) -> None:
        if self._task_group is None:
            raise SlotfsmError("the controller is not running: use 'async with Controller(...)'")

    def _claim(self, slot: str, model: str) -> None:
        """Refuse a model another slot holds, is loading, or may still hold.

        The server keeps one copy of each model: two slots sharing one would
        unload it under each other.  Checked and claimed with no await in
        between, so two concurrent calls cannot both pass.
        """
        for other, actor in self._actors.items():
            if other == slot:
                continue
            snap = actor.snapshot
            if model in (snap.model, snap.target) or (other, model) in self._loading:
                raise ModelInUseError(f"model {model!r} is in use by slot {other!r}")
            if model == snap.stray:
                raise ModelInUseError(
                    f"slot {other!r} may still hold model {model!r} (see its snapshot's"
                    " 'stray'); unload or reset that slot first"
                )

    async def _validate(self, entry: ModelEntry) -> Failure | None:
        return await validate(entry, policy=self._hash_policy, cache=self._cache)

    async def _reconcile_after_load(self) -> None:
        """After every ``/load``: even a 200 can hide an evict-all (ADR-0007).

        Any ``/health`` reading sent after this call, and handled by every
        slot, will do: loads that finish together share one reading.
        """
        await self._watcher.observe(newer_than=self._sequence())

    async def _tell_every_slot(self, observed: Observed) -> None:
        """Tell every slot, and return once every slot has handled it."""
        actors = list(self._actors.values())
        remaining = len(actors)
        if not remaining:
            return
        done = anyio.Event()

        def handled() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                done.set()

        for actor in actors:
            actor.tell(observed, handled)
        await done.wait()

    def _on_transition(self, record: SlotTransition) -> None:
        self._hub.publish(record)
        if self._state_dirty is not None:
            self._state_dirty.set()

    def _assignments(self) -> dict[str, str]:
        held: dict[str, str] = {}
        for name, actor in self._actors.items():
            snap = actor.snapshot
            model = snap.model or (snap.target if snap.state is SlotState.LOADING else None)
            if model:
                held[name] = model
        return held

    async def _keep_state_file(self) -> None:
        assert self._state_dirty is not None
        while True:
            await self._state_dirty.wait()
            self._state_dirty = anyio.Event()
            held = self._assignments()
            if held != self._written:
                await self._write_state(held)

    async def _write_state(self, held: dict[str, str]) -> None:
        assert self._state_path is not None
        try:
            await anyio.to_thread.run_sync(write_assignments, self._state_path, held)
        except OSError as exc:
            logger.warning("could not write state file %s: %s", self._state_path, exc)
        else:
            self._written = held

    async def _resume(self) -> tuple[dict[str, tuple[SlotState, SlotData]], dict[str, str]]:
        """Slots whose recorded model the server still holds resume ``loaded``.

        Returns the resumed slots and what the file recorded.
        """
        if self._state_path is None:
            return {}, {}
        recorded = await anyio.to_thread.run_sync(read_assignments, self._state_path)
        ours = {slot: m for slot, m in recorded.items() if slot in self._configs}
        if not ours:
            return {}, recorded
        seq = self._sequence()
        now = anyio.current_time()
        try:
            on_server: Health | None = await self._client.health()
        except SlotfsmError as exc:
            logger.warning("cannot check recorded models at start (%s); first poll will", exc)
            on_server, seq = None, 0
        resumed: dict[str, tuple[SlotState, SlotData]] = {}
        for slot, model in ours.items():
            if on_server is None or model in on_server:
                data = SlotData(model=model, used_at=now, loaded_seq=seq)
                resumed[slot] = (SlotState.LOADED, data)
                logger.info("slot %s resumes with %s", slot, model)
            else:
                logger.info("slot %s: recorded model %s is gone from the server", slot, model)
        return resumed, recorded
