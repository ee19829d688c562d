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
the server where they are; with a state file, the next controller resumes them
and cleans up what was still in flight.

What the server may hold because of us is kept in one residency ledger
(:mod:`slotfsm.ledger`), keyed by the server's canonical model name.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Self, overload

import anyio
import attrs
import httpx
from anyio.abc import TaskGroup

from slotfsm.actor import SlotActor
from slotfsm.config import SlotConfig, positive_seconds
from slotfsm.courier import Courier
from slotfsm.errors import (
    ConfigError,
    ControllerClosedError,
    Failure,
    PreloadError,
    SlotfsmError,
    UnknownSlotError,
)
from slotfsm.events import Cancel, Load, Observed, Reset, Unload, UseChanged
from slotfsm.idle import IdleWatcher, Reading
from slotfsm.ledger import Ledger, Phase
from slotfsm.lemonade import DEFAULT_TIMEOUT, Health, LemonadeClient, LemonadeError, ModelInfo
from slotfsm.preflight import check_args, check_backend, file_for_checkpoint, same_file
from slotfsm.preload import FingerprintCache, HashPolicy, NeedsHash, validate, validate_cached
from slotfsm.registry import ModelEntry, Registry
from slotfsm.rulebook import Rulebook
from slotfsm.rules import has_news
from slotfsm.snapshot import Gap, SlotSnapshot, SlotTransition
from slotfsm.statefile import Record, StateLock, read_state, write_state
from slotfsm.states import SlotData, SlotState
from slotfsm.stream import TransitionHub, TransitionStream

__all__ = ["Controller"]

logger = logging.getLogger("slotfsm")


_PREFIXES = ("extra.", "user.")


def canonical_name(name: str) -> str:
    """The name ``/health`` lists for a ``/load`` name (Lemonade 11.7.0).

    ``/load`` accepts ``extra.X`` and ``user.X`` and echoes them as sent, but
    ``/health`` lists the public id ``X``; ``builtin.X`` stays as it is.
    """
    for prefix in _PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    return name


class Controller:
    """Runs every configured slot against one Lemonade Server.

    ``lemonade_url`` is the server root (requests go to ``/api/v1/...``);
    ``registry`` names the model files; ``slots`` configures each slot (there
    may be none); ``poll_interval`` is the idle watcher's cadence (one
    ``/health`` per interval for all slots).  ``api_key`` is sent as a bearer
    token and shown nowhere.  ``hash_policy`` chooses whether an unchanged
    file is hashed again (see :mod:`slotfsm.preload`).  ``state_path`` keeps
    the residency ledger across restarts (one running controller per file).
    ``transport`` replaces the HTTP transport (the testing kit's in-process
    fake uses it).  ``cache_path`` keeps the fingerprint cache in a file that
    survives restarts and that controllers and the command line share (off by
    default; pass :func:`slotfsm.preload.default_cache_path` to share the
    command line's).  ``allow_unverified`` lets entries without a sha256 load
    after the checks that can run (off by default: ADR-0007 §1).
    ``transition_ring`` is how many records ``transitions(since=...)`` can replay.
    ``api_prefix`` is where the API answers: ``/api/v1`` (the default) or ``/v1``
    (every Lemonade route answers under both).  ``unmanaged_idle_timeout``
    (off by default) also unloads models nobody here loaded — another
    client's, or the server's on-demand loads — once their ``last_use`` has
    not moved for that long; a model a slot owns or the ledger knows is never
    touched by it.
    """

    def __init__(
        self,
        *,
        lemonade_url: str,
        registry: Registry | Iterable[ModelEntry],
        slots: Iterable[SlotConfig] = (),
        poll_interval: float = 30.0,
        api_key: str | None = None,
        hash_policy: HashPolicy = HashPolicy.FINGERPRINT,
        state_path: str | os.PathLike[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_timeout: float = DEFAULT_TIMEOUT,
        history: int = 32,
        cache_path: str | os.PathLike[str] | None = None,
        allow_unverified: bool = False,
        transition_ring: int = 1024,
        api_prefix: str = "/api/v1",
        unmanaged_idle_timeout: float | None = None,
    ) -> None:
        self._registry = registry if isinstance(registry, Registry) else Registry(registry)
        self._configs: dict[str, SlotConfig] = {}
        for config in slots:
            if not isinstance(config, SlotConfig):
                raise ConfigError(f"slots must be SlotConfig values, got {type(config).__name__}")
            if config.name in self._configs:
                raise ConfigError(f"duplicate slot name {config.name!r}")
            self._configs[config.name] = config
        if history < 1:
            raise ConfigError(f"history must be >= 1, got {history}")
        self._client = LemonadeClient(
            lemonade_url,
            api_key=api_key,
            transport=transport,
            timeout=http_timeout,
            api_prefix=api_prefix,
        )
        try:
            self._hash_policy = HashPolicy(hash_policy)
        except ValueError:
            choices = ", ".join(p.value for p in HashPolicy)
            raise ConfigError(
                f"hash_policy must be one of {choices}, got {hash_policy!r}"
            ) from None
        self._cache = FingerprintCache()
        self._cache_path = cache_path
        self._cache_dirty: anyio.Event | None = None
        self._allow_unverified = bool(allow_unverified)
        self._unmanaged_after = (
            None
            if unmanaged_idle_timeout is None
            else positive_seconds("unmanaged_idle_timeout", unmanaged_idle_timeout)
        )
        self._unmanaged: dict[str, tuple[int | None, float]] = {}  # name -> (last_use, since)
        self._models: dict[str, ModelInfo] = {}  # name -> what the server says of it
        self._system: Mapping[str, str] | None = None  # llama.cpp backends and their states
        self._wall_offset = 0.0
        self._state_path = state_path
        self._rulebook = Rulebook()
        self._hub = TransitionHub(transition_ring)
        self._sequence = itertools.count(1).__next__
        self._ledger = Ledger(self._sequence, self._ledger_changed)
        self._requests: TaskGroup | None = None
        self._courier = Courier(self._client, self._ledger, self._request_group, self._cleaned)
        self._actors: dict[str, SlotActor] = {}
        # Every actor gets the same callbacks, bound here once: a bound method is a new object
        # each time it is read, and one kept per slot is more for the cyclic collector to walk.
        self._new_actor = functools.partial(
            SlotActor,
            rulebook=self._rulebook,
            courier=self._courier,
            ledger=self._ledger,
            validate=self._validate,
            validate_cached=self._validate_cached,
            preflight=self._preflight,
            preflight_now=self._preflight_now,
            reconcile=self._reconcile_after_load,
            loaded_file=self._loaded_file,
            sequence=self._sequence,
            publish=self._hub.publish,
            next_id=self._hub.next_id,
            history=history,
        )
        self._actor_group: TaskGroup | None = None
        self._watcher = IdleWatcher(self._client, self._deliver, self._sequence, poll_interval)
        self._exit: contextlib.AsyncExitStack | None = None
        self._started = False
        self._running = False
        self._state_dirty: anyio.Event | None = None
        self._written: dict[str, dict[str, object]] | None = None

    def __repr__(self) -> str:
        return f"Controller({self._client.base_url!r}, slots={list(self._configs)})"

    # -- lifetime -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start in order: state file, client, requests, slots, state writer, watcher.

        Leaving stops them in the reverse order, so nothing is ever told to a
        part that has already stopped.
        """
        if self._started:
            raise SlotfsmError("a Controller runs once; create a new one to run again")
        self._started = True
        async with contextlib.AsyncExitStack() as stack:
            if self._state_path is not None:
                lock = StateLock(self._state_path)  # the file itself is checked as it is read
                lock.acquire()
                stack.callback(lock.release)
            stack.push_async_callback(self._client.aclose)
            self._wall_offset = time.time() - anyio.current_time()
            self._watcher.wall_offset = self._wall_offset
            if self._cache_path is not None:
                path = self._cache_path
                self._cache = await anyio.to_thread.run_sync(lambda: FingerprintCache.load(path))
            resumed = await self._resume()
            stack.push_async_callback(self._say_goodbye)
            self._requests = await self._task_group(stack)
            actors = await self._task_group(stack)
            self._actor_group = actors
            for name, config in self._configs.items():
                actor = self._make_actor(config, *resumed.get(name, (SlotState.IDLE, None)))
                actors.start_soon(actor.run)  # it takes commands already: nothing to wait for
            if self._state_path is not None:
                self._state_dirty = anyio.Event()
                self._state_dirty.set()
                (await self._task_group(stack)).start_soon(self._keep_state_file)
            if self._cache_path is not None:
                self._cache_dirty = anyio.Event()
                stack.push_async_callback(self._save_cache)
                (await self._task_group(stack)).start_soon(self._keep_cache_file)
            await (await self._task_group(stack)).start(self._watcher.run)
            self._running = True
            self._exit = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._running = False
        stack, self._exit = self._exit, None
        assert stack is not None
        await stack.aclose()

    @staticmethod
    async def _task_group(stack: contextlib.AsyncExitStack) -> TaskGroup:
        """A task group that the stack cancels, then waits for, when it unwinds."""
        group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(group.cancel_scope.cancel)
        return group

    def _make_actor(
        self, config: SlotConfig, state: SlotState = SlotState.IDLE, data: SlotData | None = None
    ) -> SlotActor:
        assert self._actor_group is not None
        actor = self._new_actor(
            config,
            wall_offset=self._wall_offset,
            state=state,
            data=data,
            task_group=self._actor_group,
        )
        self._actors[config.name] = actor
        return actor

    async def _say_goodbye(self) -> None:
        """Last words: what stays on the server, the final state file, and release."""
        with anyio.CancelScope(shield=True):
            held = {
                name: e.owner or "(nobody)"
                for name, e in self._ledger.entries().items()
                if e.owner is not None or e.owed
            }
            if held:
                logger.info(
                    "controller stopped; left on the server (loaded, arriving or to clean up): %s",
                    ", ".join(f"{model}={slot}" for model, slot in sorted(held.items())),
                )
            if self._state_path is not None:
                await self._write_state()
            self._hub.close()
            for actor in self._actors.values():
                actor.detach()
            self._actors.clear()

    # -- commands ----------------------------------------------------------------------

    async def load(self, slot: str, model: str) -> SlotSnapshot:
        """Validate ``model`` and load it into ``slot``; return the settled snapshot.

        The file is validated before the server hears of it (ADR-0007 §1); a
        failure leaves a held model loaded and sends nothing.  ``/load`` is
        sent once, bounded by the slot's ``load_timeout`` and never retried
        (ADR-0007 §3); every slot is reconciled with ``/health`` before this
        returns.  Check ``snap.model`` and ``snap.error``, not only ``state``.
        The model is known by the name ``/health`` lists (``extra.X`` is
        ``X``).

        Commands to one slot take effect in the order they were given.
        Cancelling the call only abandons the wait: the load goes on (or waits
        its turn behind the slot's current command) and settles as usual.
        Raises :class:`ModelInUseError` if another slot owns ``model``, has a
        load of it queued, or may still have it on the server.
        """
        actor = self._actor(slot)
        entry = self._registry[model]
        name = canonical_name(entry.name)
        if name != entry.name:
            entry = attrs.evolve(entry, name=name)
        self._ledger.reserve(slot, name)
        return await actor.command(Load(entry), lambda: self._ledger.release(slot, name))

    async def unload(self, slot: str) -> SlotSnapshot:
        """Empty ``slot`` (``/unload`` with its model's name); return the settled snapshot.

        What the slot's earlier work may have left on the server (its
        ``cleanups``) is unloaded too, in the background.
        """
        snap = await self._actor(slot).command(Unload())
        for name in self._ledger.cleanups_of(slot):
            entry = self._ledger.get(name)
            if entry is not None and not entry.loads:
                self._courier.clean_up(name)
        return snap

    async def reset(self, slot: str) -> SlotSnapshot:
        """Leave ``error`` for ``idle`` without touching the server.

        What the slot's work may have left on the server stays in the ledger
        and is still cleaned up: a reset forgets the failure, not the model.
        """
        return await self._actor(slot).command(Reset())

    async def cancel(self, slot: str) -> SlotSnapshot:
        """Stop what ``slot`` is doing now; return the settled snapshot.

        A running validation stops within one chunk; a ``/load`` the slot
        waits for is abandoned — its possible late arrival is followed and
        cleaned up like a timeout's (ADR-0007 §4).  The slot settles with a
        ``CANCELLED`` failure, keeping a model it still holds (a swap
        cancelled while the new file was validated).  Commands queued behind
        still run.  On a settled slot it changes nothing.
        """
        return await self._actor(slot).command(Cancel())

    # -- changes at run time ----------------------------------------------------------

    def add_slot(self, config: SlotConfig) -> SlotSnapshot:
        """Add a slot (while running, or before start); returns its snapshot.

        Safe from any task of the controller's event loop; the slot takes
        commands at once (they wait in its mailbox until its actor runs).
        """
        if not isinstance(config, SlotConfig):
            raise ConfigError(f"slots must be SlotConfig values, got {type(config).__name__}")
        if config.name in self._configs:
            raise ConfigError(f"duplicate slot name {config.name!r}")
        self._configs[config.name] = config
        if not self._running:
            return SlotSnapshot(config.name, SlotState.IDLE)
        assert self._actor_group is not None
        actor = self._make_actor(config)
        self._actor_group.start_soon(actor.run)
        actor.note("slot_added", f"slot {config.name!r} added")
        return actor.snapshot

    async def remove_slot(self, name: str) -> SlotSnapshot:
        """Remove a slot, unloading the model it holds first; returns its last snapshot.

        The slot finishes its queued commands, then its model (if any) is
        unloaded.  If that unload fails the slot stays (``FailureError`` with
        the failure): a model is never left on the server unmanaged.  What
        the slot's earlier work left behind stays in the ledger and is still
        cleaned up.
        """
        actor = self._actor(name)
        snap = await actor.command(Unload())
        if self._actors.get(name) is not actor:  # removed meanwhile by another caller
            raise UnknownSlotError(f"slot {name!r} was removed")
        if snap.model is not None:
            snap.raise_for_failure()
        actor.note("slot_removed", f"slot {name!r} removed")
        actor.stop()
        self._actors.pop(name, None)
        self._configs.pop(name, None)
        self._ledger.sync(name)  # owns nothing now
        actor.detach()
        return actor.snapshot

    def reconfigure(self, config: SlotConfig) -> None:
        """Replace a slot's configuration; it applies from the slot's next decision.

        A changed ``idle_timeout`` applies at the next poll, ``load_timeout``
        from the next load, load options from the next ``/load``.
        """
        if config.name not in self._configs:
            self._actor(config.name)  # raises UnknownSlotError
        self._configs[config.name] = config
        actor = self._actors.get(config.name)
        if actor is not None:
            actor.reconfigure(config)
            actor.note("reconfigured", f"slot {config.name!r} reconfigured")

    def replace_registry(self, registry: Registry | Iterable[ModelEntry]) -> None:
        """Use ``registry`` for the next loads.

        Slots keep what they hold (and a load under way keeps its entry); a
        loaded model that left the registry is still idle-unloaded.
        """
        self._registry = registry if isinstance(registry, Registry) else Registry(registry)
        self._models.clear()
        if self._running:
            now = anyio.current_time()
            record = SlotTransition(
                "",
                SlotState.IDLE,
                SlotState.IDLE,
                "registry_replaced",
                now,
                reason=f"registry replaced ({len(self._registry)} models)",
                id=self._hub.next_id(),
                wall_at=now + self._wall_offset,
            )
            self._on_transition(record)

    async def prevalidate(
        self,
        models: Iterable[str] | None = None,
        *,
        limit: int = 2,
        progress: Callable[[str, Failure | None], None] | None = None,
    ) -> dict[str, Failure | None]:
        """Validate registry models now (all by default), ``limit`` at a time, and cache them.

        A later ``load()`` of an unchanged file then waits only for a
        ``stat``.  ``progress(name, failure)`` is called as each finishes;
        returns every result by name.  Nothing is sent to the server.
        """
        self._check_running()
        names = list(models) if models is not None else [e.name for e in self._registry]
        entries = [self._registry[name] for name in names]
        if limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        results: dict[str, Failure | None] = {}
        limiter = anyio.CapacityLimiter(limit)

        async def one(entry: ModelEntry) -> None:
            async with limiter:
                failure = await self._validate(entry)
            results[entry.name] = failure
            if progress is not None:
                progress(entry.name, failure)

        async with anyio.create_task_group() as group:
            for entry in entries:
                group.start_soon(one, entry)
        return results

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
    def ledger(self) -> Ledger:
        """What the server may hold because of this controller (read it, do not change it)."""
        return self._ledger

    @property
    def idle_watcher(self) -> IdleWatcher:
        """The ``/health`` poller (its counters are useful in dashboards and tests)."""
        return self._watcher

    @overload
    def transitions(
        self, buffer: int = 256, *, since: None = None
    ) -> TransitionStream[SlotTransition]: ...

    @overload
    def transitions(
        self, buffer: int = 256, *, since: int
    ) -> TransitionStream[SlotTransition | Gap]: ...

    def transitions(
        self, buffer: int = 256, *, since: int | None = None
    ) -> TransitionStream[SlotTransition] | TransitionStream[SlotTransition | Gap]:
        """Every transition of every slot from now on (or after id ``since``), for dashboards.

        With ``since`` the records after that id still in the ring are
        replayed first, and what has left the ring is announced by a
        :class:`~slotfsm.snapshot.Gap`.  A slow reader never blocks a slot:
        past ``buffer`` unread records the oldest is dropped, counted in the
        stream's ``dropped`` (and, with ``since``, announced by a ``Gap``).
        """
        self._check_running()
        if since is None:
            return self._hub.subscribe(buffer)
        return self._hub.replay(since, buffer)

    @property
    def last_health(self) -> Reading | None:
        """The latest ``/health`` reading (rows as the server sent them), or ``None``.

        An application never needs a poll of its own: this is the one the
        controller already makes.
        """
        return self._watcher.last

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
        """Read ``/health`` now and reconcile every slot with it (as a poll does).

        Raises :class:`ControllerClosedError` if the controller closes meanwhile.
        """
        self._check_running()
        try:
            return await self._watcher.observe()
        except RuntimeError as exc:  # httpx: the client was closed under us
            raise ControllerClosedError("the controller closed during refresh()") from exc

    # -- internals --------------------------------------------------------------------

    def _actor(self, slot: str) -> SlotActor:
        if slot not in self._configs:
            known = ", ".join(repr(n) for n in self._configs) or "none"
            raise UnknownSlotError(f"no slot named {slot!r} (slots: {known})")
        self._check_running()
        return self._actors[slot]

    def _check_running(self) -> None:
        if not self._running:
            if self._started:
                raise ControllerClosedError("the controller is closed (not running)")
            raise SlotfsmError("the controller is not running: use 'async with Controller(...)'")

    def _request_group(self) -> TaskGroup:
        if self._requests is None:
            raise ControllerClosedError("the controller is not running")
        return self._requests

    def _validate_cached(self, entry: ModelEntry) -> Failure | NeedsHash | None:
        """The validation's answer if no hash is needed (a cache hit: a ``stat``, inline)."""
        return validate_cached(
            entry,
            policy=self._hash_policy,
            cache=self._cache,
            allow_unverified=self._allow_unverified,  # an entry may allow itself (preload)
        )

    async def _validate(self, entry: ModelEntry) -> Failure | None:
        failure = await validate(
            entry,
            policy=self._hash_policy,
            cache=self._cache,
            allow_unverified=self._allow_unverified,  # an entry may allow itself (preload)
        )
        if self._cache_dirty is not None and self._cache.dirty:
            self._cache_dirty.set()
        return failure

    async def _preflight(
        self, entry: ModelEntry, config: SlotConfig
    ) -> tuple[Failure | None, bool | None]:
        """Ask the server what a ``/load`` would do, before anything is sent (ADR-0007 §1).

        Options the server would answer with an evict-all are refused
        (``OPTION_REFUSED``); a registry path that is not the file the server
        loads for the name is refused (``CHECKPOINT_MISMATCH``).  Returns the
        refusal, and whether the server's file was confirmed (``None``: it
        could not tell).  A server that cannot answer these questions is not
        guessed at.  Answers are kept per name until the registry is replaced.
        """
        options = config.load_options
        if check_args(entry.name, options) is None:  # what the options refuse is not asked about
            if _needs_backends(config) and self._system is None:
                await self._backends()
            if check_backend(entry.name, options, self._system) is None:
                await self._model_info(entry.name)
        return self._judge(entry, config, self._system, self._models.get(entry.name))

    def _preflight_now(
        self, entry: ModelEntry, config: SlotConfig
    ) -> tuple[Failure | None, bool | None] | None:
        """The preflight's verdict if the server's answers are known already, else ``None``."""
        if (_needs_backends(config) and self._system is None) or entry.name not in self._models:
            return None
        return self._judge(entry, config, self._system, self._models[entry.name])

    def _judge(
        self,
        entry: ModelEntry,
        config: SlotConfig,
        backends: Mapping[str, str] | None,
        info: ModelInfo | None,
    ) -> tuple[Failure | None, bool | None]:
        """The preflight's verdict from what the server said (``None``: it could not say)."""
        options = config.load_options
        refused = check_args(entry.name, options)
        if refused is None and _needs_backends(config):
            refused = check_backend(entry.name, options, backends)
        if refused is not None:
            return refused, None
        if info is not None and info.id != entry.name:
            failure = Failure(
                PreloadError.LOAD_FAILED,
                f"the server lists {entry.name!r} as {info.id!r}: its /health rows would not match;"
                f" name the registry entry {info.id!r}; nothing sent",
                path=entry.path,
                model=entry.name,
                expected=entry.name,
                found=info.id,
            )
            return failure, None
        # A stat or two, inline like the checks of a cached validation (ADR-0007 §1).
        loads = file_for_checkpoint(info.checkpoint if info is not None else None)
        if loads is None:
            return None, None
        if same_file(loads, entry.path):
            return None, True
        failure = Failure(
            PreloadError.CHECKPOINT_MISMATCH,
            f"the server loads {str(loads)!r} for {entry.name!r}, not the registry's file;"
            " nothing sent",
            path=entry.path,
            model=entry.name,
            expected=entry.path,
            found=str(loads),
        )
        return failure, None

    async def _backends(self) -> Mapping[str, str] | None:
        if self._system is None:
            try:
                info = await self._client.system_info()
            except LemonadeError as exc:
                logger.info("system-info unavailable, backends not checked: %s", exc)
                return None
            self._system = info.llamacpp_backends
        return self._system

    async def _model_info(self, name: str) -> ModelInfo | None:
        """What ``GET /api/v1/models/{name}`` says (kept per name), or ``None`` if it cannot say."""
        if name not in self._models:
            try:
                self._models[name] = await self._client.model_info(name)
            except LemonadeError as exc:
                logger.info("cannot ask the server about %s: %s", name, exc)
                return None
        return self._models[name]

    def _loaded_file(self, name: str) -> str | None:
        reading = self._watcher.last
        row = reading.health.get(name) if reading is not None else None
        return row.model_file if row is not None else None

    async def _keep_cache_file(self) -> None:
        assert self._cache_dirty is not None
        while True:
            await self._cache_dirty.wait()
            self._cache_dirty = anyio.Event()
            await self._save_cache()

    async def _save_cache(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._cache.save)
            except OSError as exc:
                logger.warning("could not save the fingerprint cache %s: %s", self._cache_path, exc)

    async def _reconcile_after_load(self, cause: str) -> None:
        """After every ``/load``: even a 200 can hide an evict-all (ADR-0007).

        Any ``/health`` reading sent after this call, and handled by every
        slot, will do: loads that finish together share one reading.
        ``cause`` names the load, for the eviction reports this reading makes.
        """
        await self._watcher.observe(newer_than=self._sequence(), cause=cause)

    async def _deliver(self, observed: Observed) -> int:
        """Tell the slots a reading concerns, then settle the ledger with the same reading.

        Slots go first: a slot that learns its model is gone releases it, and
        the same reading then proves it gone from the ledger too.  A reading
        concerns a slot only if the rulebook would change something there (see
        :meth:`_concerned`): the others are not told, so a pass costs what
        changed, not the number of slots.
        """
        concerned = self._concerned(observed)
        await self._tell_slots(concerned, observed)
        for name in self._ledger.observed(observed.health, observed.seq):
            self._courier.clean_up(name)
        if self._unmanaged_after is not None:
            self._unload_idle_unmanaged(observed, self._unmanaged_after)
        return len(concerned)

    def _unload_idle_unmanaged(self, observed: Observed, after: float) -> None:
        """The optional policy: unload models nobody here loaded once idle for ``after`` s.

        Idleness is measured as for a slot (ADR-0007 §2): on slotfsm's clock,
        from the last reading whose ``last_use`` differed; a first sighting
        never expires; a busy row is use.
        """
        seen: dict[str, tuple[int | None, float]] = {}
        for row in observed.health.models:
            if row.name in self._ledger:
                continue  # a slot's, or ours to clean up: never this policy's
            last_use, since = self._unmanaged.get(row.name, (row.last_use, observed.at))
            if row.last_use != last_use or row.busy:
                since = observed.at
            seen[row.name] = (row.last_use, since)
            if row.name in self._unmanaged and observed.at - since >= after:
                self._courier.unload_unmanaged(row.name)
        self._unmanaged = seen

    async def _tell_slots(self, actors: list[SlotActor], observed: Observed) -> None:
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
            try:
                actor.tell(observed, handled)
            except ControllerClosedError:  # stopping: that slot is past caring
                handled()
        await done.wait()

    def _concerned(self, observed: Observed) -> list[SlotActor]:
        """The slots ``observed`` may change: one check per slot the ledger knows of.

        A slot that owns nothing in the ledger and has no load command
        waiting is idle or in error (or about to be, with nothing queued that
        leaves those states): a reading changes nothing there.  Of the
        others, a slot with an event queued is always told; an idle mailbox
        is told only what :func:`slotfsm.rules.has_news` finds.
        """
        slots = dict.fromkeys(self._ledger.owners())
        slots.update(dict.fromkeys(self._ledger.claimants()))
        concerned = []
        for slot in slots:
            actor = self._actors.get(slot)
            if actor is None:
                continue
            interest = actor.interest
            if interest is None or has_news(*interest, observed):
                concerned.append(actor)
        return concerned

    def _cleaned(self, name: str, origin: str | None) -> None:
        """A clean-up unloaded ``name``: say so in the stream, on the slot that left it."""
        actor = self._actors.get(origin) if origin is not None else None
        if actor is not None:
            actor.note(
                "cleanup", f"stray gone: {name} unloaded (left by a timed-out or lost load)", name
            )

    def _on_transition(self, record: SlotTransition) -> None:
        self._hub.publish(record)

    def _ledger_changed(self) -> None:
        if self._state_dirty is not None:
            self._state_dirty.set()

    async def _keep_state_file(self) -> None:
        assert self._state_dirty is not None
        while True:
            await self._state_dirty.wait()
            self._state_dirty = anyio.Event()
            await self._write_state()

    async def _write_state(self) -> None:
        assert self._state_path is not None
        records = self._ledger.records()
        if records == self._written:
            return
        try:
            await anyio.to_thread.run_sync(write_state, self._state_path, records)
        except OSError as exc:
            logger.warning("could not write state file %s: %s", self._state_path, exc)
        else:
            self._written = records

    async def _resume(self) -> dict[str, tuple[SlotState, SlotData]]:
        """Take over what the state file records (ADR-0007 §4).

        A slot whose recorded model the server still holds resumes
        ``loaded``.  Everything else recorded — loads that were in flight,
        unloads whose answer never came, models nobody managed — is owed:
        cleaned up when seen, and dropped on proof.
        """
        if self._state_path is None:
            return {}
        records = await anyio.to_thread.run_sync(read_state, self._state_path)
        self._written = {}
        if not records:
            return {}
        seq = self._sequence()
        now = anyio.current_time()
        try:
            on_server: Health | None = await self._client.health()
        except SlotfsmError as exc:
            logger.warning("cannot check recorded models at start (%s); first poll will", exc)
            on_server, seq = None, 0
        resumed: dict[str, tuple[SlotState, SlotData]] = {}
        owed: list[tuple[str, str | None, bool, bool]] = []
        for record in records.values():
            name, slot = record.name, record.owner
            if record.phase == Phase.HELD and slot in self._configs and slot not in resumed:
                if on_server is None or name in on_server:
                    resumed[slot] = (
                        SlotState.LOADED,
                        SlotData(model=name, used_at=now, loaded_seq=seq),
                    )
                    logger.info("slot %s resumes with %s", slot, name)
                else:
                    logger.info("slot %s: recorded model %s is gone from the server", slot, name)
                continue
            owed.append(_owed(record))
        self._ledger.restore(owed)
        return resumed


def _needs_backends(config: SlotConfig) -> bool:
    """Whether the slot's options name a llama.cpp backend the server must support."""
    return config.load_options.get("llamacpp_backend") not in (None, "auto")


def _owed(record: Record) -> tuple[str, str | None, bool, bool]:
    """``(name, origin, arriving, stray)`` for a record no slot resumes."""
    arriving = record.arrivals > 0 or record.phase == Phase.LOADING
    return record.name, record.owner or record.origin, arriving, record.stray or not arriving
