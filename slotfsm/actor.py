"""One slot's actor: the only writer of that slot's state.

The actor owns a mailbox.  Callers' commands, the results of the slot's own
work and the server observations all arrive there as events, and the actor
feeds them one at a time to the rulebook.  Handling an event never waits:
the effects a transition asks for are started, and each reports back as one
more event.  What must await something first (hashing, asking the server, a
swap's unload of the old model) is *state-owned work*: a task cancelled the
moment the slot leaves the state that started it.  A request to the server
runs in the controller's courier, which reports its answer only while the
slot still waits for it.  A result that arrives for a state already left is
refused as stale.  The state timer is part of the wait for the next event.

A failure inside the work (an HTTP error, an exception anywhere) becomes an
event that takes this slot to ``error``; it never escapes into the other
actors or the controller.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.abc import TaskGroup

from slotfsm.config import SlotConfig
from slotfsm.courier import Courier
from slotfsm.courier import Outcome as RequestOutcome
from slotfsm.errors import ControllerClosedError, Failure, PreloadError
from slotfsm.events import (
    CallLoad,
    CallUnload,
    Cancel,
    Effect,
    Event,
    LoadFailed,
    LoadSucceeded,
    LoadTimedOut,
    StartValidation,
    Unloaded,
    UnloadFailed,
    Validated,
)
from slotfsm.ledger import Answer, Ledger, Phase
from slotfsm.preflight import same_file
from slotfsm.preload import NEEDS_HASH, NeedsHash
from slotfsm.rulebook import Outcome, Rulebook, SlotMachine, Step
from slotfsm.rules import TIMERS
from slotfsm.snapshot import SlotSnapshot, SlotTransition
from slotfsm.states import SlotData, SlotState

if TYPE_CHECKING:
    from slotfsm.registry import ModelEntry

__all__ = ["SlotActor"]

logger = logging.getLogger("slotfsm")

Validator = Callable[["ModelEntry"], Awaitable[Failure | None]]
CachedValidator = Callable[["ModelEntry"], "Failure | NeedsHash | None"]
"""The validation's answer when no hash is needed; :data:`~slotfsm.preload.NEEDS_HASH` if not."""
Verdict = tuple[Failure | None, bool | None]
Preflight = Callable[["ModelEntry", SlotConfig], Awaitable[Verdict]]
"""Asks the server, before anything is sent, whether it will load the validated file with
these options: ``(failure, confirmed)`` (see :mod:`slotfsm.preflight`)."""
KnownPreflight = Callable[["ModelEntry", SlotConfig], Verdict | None]
"""The preflight's verdict from what the server already said, or ``None`` if it must be asked."""
LoadedFile = Callable[[str], "str | None"]
"""The file the server's latest reading says it loaded for a name, if it says."""


class _Reply:
    """Where a caller waits for the slot to settle after its command.

    ``answered`` runs when the actor answers, whether or not the caller is
    still waiting (a cancelled caller does not withdraw its command).
    """

    def __init__(self, answered: Callable[[], None] | None = None) -> None:
        self._done = anyio.Event()
        self._snapshot: SlotSnapshot | None = None
        self._error: BaseException | None = None
        self._answered = answered

    def resolve(self, snapshot: SlotSnapshot) -> None:
        self._snapshot = snapshot
        self._finish()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._finish()

    def _finish(self) -> None:
        self._done.set()
        if self._answered is not None:
            self._answered()

    async def wait(self) -> SlotSnapshot:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._snapshot is not None
        return self._snapshot


@attrs.frozen
class _Envelope:
    event: Event
    epoch: int | None = None  # set on work results: the state visit that started the work
    reply: _Reply | None = None
    handled: Callable[[], None] | None = None  # called once the event has been handled


class _Mailbox:
    """An actor's queue: any number of senders that never wait, one reader.

    The reader is woken, not handed the event: a cancelled wait loses
    nothing, and no event is ever in transit outside the queue.
    """

    __slots__ = ("_closed", "_items", "_wake")

    def __init__(self) -> None:
        self._items: deque[_Envelope] = deque()
        self._wake: anyio.Event | None = None
        self._closed = False

    def put(self, envelope: _Envelope) -> bool:
        """Queue ``envelope``; ``False`` (and nothing queued) once the mailbox is closed."""
        if self._closed:
            return False
        self._items.append(envelope)
        if self._wake is not None:
            self._wake.set()
            self._wake = None
        return True

    def get(self) -> _Envelope | None:
        """The oldest queued envelope, or ``None``."""
        return self._items.popleft() if self._items else None

    @property
    def waiting(self) -> bool:
        """Whether the reader waits and nothing was put since."""
        return self._wake is not None

    async def wait(self, deadline: float | None) -> bool:
        """Wait until something is queued (``True``) or ``deadline`` passes (``False``)."""
        if not self._items:
            self._wake = wake = anyio.Event()
            try:
                if deadline is None:
                    await wake.wait()
                else:
                    with anyio.CancelScope(deadline=deadline):
                        await wake.wait()
            finally:
                self._wake = None
        return bool(self._items)

    def close(self) -> list[_Envelope]:
        """Refuse every later ``put``; return what was still queued."""
        self._closed = True
        left = list(self._items)
        self._items.clear()
        return left


class SlotActor:
    """Runs one slot: mailbox in, rulebook in the middle, state-owned work out."""

    def __init__(
        self,
        config: SlotConfig,
        rulebook: Rulebook,
        *,
        courier: Courier,
        ledger: Ledger,
        validate: Validator,
        validate_cached: CachedValidator = lambda entry: NEEDS_HASH,
        preflight: Preflight,
        preflight_now: KnownPreflight = lambda entry, config: None,
        reconcile: Callable[[str], Awaitable[None]],
        loaded_file: LoadedFile = lambda name: None,
        sequence: Callable[[], int],
        publish: Callable[[SlotTransition], None],
        next_id: Callable[[], int] = lambda: 0,
        wall_offset: float = 0.0,
        history: int = 32,
        state: SlotState = SlotState.IDLE,
        data: SlotData | None = None,
        task_group: TaskGroup,
    ) -> None:
        self.config = config
        self.name = config.name
        self._rulebook = rulebook
        self._courier = courier
        self._ledger = ledger
        self._validate = validate
        self._validate_cached = validate_cached
        self._preflight = preflight
        self._preflight_now = preflight_now
        self._reconcile = reconcile
        self._loaded_file = loaded_file
        self._sequence = sequence
        self._publish = publish
        self._next_id = next_id
        self._wall_offset = wall_offset  # wall-clock seconds = monotonic + this
        self._machine = SlotMachine(config, data)
        rulebook.attach(self._machine, state)
        self._mailbox = _Mailbox()
        self._postponed: deque[_Envelope] = deque()
        self._waiting: list[_Reply] = []
        self._epoch = 0
        self._work: set[anyio.CancelScope] = set()
        self._history: deque[SlotTransition] = deque(maxlen=history)
        self._since = anyio.current_time()
        self._doing = ""  # what the load work is doing now, for the timer's message
        self._answered = False  # the load of the current visit to ``loading`` answered
        self._unload_sent = False  # the swap's unload of the old model has gone out
        self._deadline: float | None = None  # when the state timer fires, if one is armed
        self._timer_seconds = 0.0
        self._task_group = task_group  # where the slot's work runs
        self._scope = anyio.CancelScope()  # stop() may come before run() does
        self._sync()
        self._snapshot: SlotSnapshot | None = None  # made when asked for, after a change

    # -- the outside -------------------------------------------------------------

    @property
    def snapshot(self) -> SlotSnapshot:
        """The slot as of its latest handled event, with what the ledger knows now."""
        leaving = self._ledger.owned_by(self.name, Phase.LEAVING)
        cleanups = self._ledger.cleanups_of(self.name)
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = self._make_snapshot(leaving, cleanups)
        if leaving == snap.leaving and cleanups == snap.cleanups:
            return snap
        return attrs.evolve(snap, leaving=leaving, cleanups=cleanups)

    async def command(
        self, event: Event, answered: Callable[[], None] | None = None
    ) -> SlotSnapshot:
        """Send a command and wait until the slot settles after taking it.

        Cancelling the wait does not withdraw the command; ``answered`` runs
        once the slot has answered it (or the controller closed).
        """
        reply = _Reply(answered)
        try:
            self._deliver(_Envelope(event, reply=reply))
        except ControllerClosedError as exc:
            reply.fail(exc)
        return await reply.wait()

    def tell(self, event: Event, handled: Callable[[], None] | None = None) -> None:
        """Send an event without waiting; ``handled`` is called once it has been handled."""
        self._deliver(_Envelope(event, handled=handled))

    def _deliver(self, message: _Envelope) -> None:
        if not self._mailbox.put(message):
            raise ControllerClosedError(f"slot {self.name!r}: the controller is closed")

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Handle the mailbox until stopped or cancelled; fail whoever still waits on exit.

        Start it with ``start_soon``: the slot takes commands from construction
        on (they wait in its mailbox), and its state, ``since`` and snapshot
        are right from then on too.  The work its states start runs in the
        task group the actor was given, not in one of its own: an idle slot
        keeps one task and one cancel scope, and stopping it unwinds no group.
        Work still running when the actor stops is cancelled here.
        """
        try:
            with self._scope:
                try:
                    if self._scope.cancel_called:  # stopped before it ran: it takes nothing
                        return
                    self._arm_timer(self._since)
                    while True:
                        envelope = self._mailbox.get()
                        if envelope is None:
                            # Everything taken is handled: while the mailbox
                            # waits, the slot is what the next event meets.
                            if not await self._mailbox.wait(self._deadline):
                                envelope = self._timer_fired()
                            if envelope is None:
                                continue
                        self._handle(envelope)
                        if envelope.handled is not None:
                            envelope.handled()
                finally:
                    for scope in self._work:
                        scope.cancel()
        finally:
            left = self._mailbox.close()
            unanswered = [*self._waiting, *(e.reply for e in self._postponed if e.reply)]
            for envelope in left:  # what is still in the mailbox is answered too
                if envelope.reply is not None:
                    unanswered.append(envelope.reply)
                if envelope.handled is not None:
                    envelope.handled()
            for reply in unanswered:
                reply.fail(ControllerClosedError(f"slot {self.name!r}: the controller closed"))

    def _handle(self, envelope: _Envelope) -> None:
        event = envelope.event
        if envelope.epoch is not None and envelope.epoch != self._epoch:
            logger.debug("slot %s: refused stale %s", self.name, event.trigger)
            return
        before = self._machine.data
        if isinstance(event, Cancel) and event.kept is None and self._kept() is not None:
            event = attrs.evolve(event, kept=self._kept())
        if event.trigger.is_command and self._postponed and not self.state.settled:
            self._postponed.append(envelope)  # commands take effect in the order given
            return
        try:
            step = self._rulebook.step(self._machine, event)
        except Exception as exc:  # a defect in an update or guard: surface it, keep running
            logger.exception("slot %s: %s failed in %s", self.name, event.trigger, self.state)
            if envelope.reply is not None:
                envelope.reply.fail(exc)
            return
        if step.outcome is Outcome.POSTPONED:
            self._postponed.append(envelope)
            return
        if step.outcome is Outcome.REFUSED:
            logger.debug("slot %s: %s", self.name, step.reason)
            if envelope.reply is not None:
                envelope.reply.resolve(self.snapshot)
            return
        if envelope.reply is not None:
            self._waiting.append(envelope.reply)
        changed = step.changed_state
        now = anyio.current_time()
        if changed:
            self._leave_state(now)
        if self._machine.data is not before or changed:
            self._sync()
        if step.notable:
            self._record(step, before, getattr(event, "at", now))
        elif (before.in_use == 0) != (self._machine.data.in_use == 0):
            serving = "serving: in use" if before.in_use == 0 else "no longer in use"
            state = self.state
            self._keep(state, state, "use", now, self._machine.data.model, serving)
        for effect in step.effects:
            self._start(effect)
        if changed:
            self._arm_timer(now)
        self._snapshot = None
        if self.state.settled and self._waiting:
            waiting, self._waiting = self._waiting, []
            snapshot = self.snapshot
            for reply in waiting:
                reply.resolve(snapshot)
        if changed and self._postponed:
            postponed, self._postponed = self._postponed, deque()
            for again in postponed:
                self._handle(again)

    @property
    def state(self) -> SlotState:
        """The slot's current state."""
        return self._machine.state

    @property
    def interest(self) -> tuple[SlotState, SlotData, SlotConfig] | None:
        """The state, data and configuration the next event will meet, if nothing is queued.

        ``None`` while the mailbox holds (or is handing over) an event or the
        actor is busy with one: the slot may not be what it looks like by the
        time it takes the next one.
        """
        if not self._mailbox.waiting:
            return None
        return self._machine.state, self._machine.data, self._machine.config

    def detach(self) -> None:
        """Leave the shared rulebook (after the actor has stopped)."""
        self._rulebook.detach(self._machine)

    def _leave_state(self, now: float) -> None:
        """Cancel the work the old state owned (and its timer): its results can no longer matter."""
        for scope in self._work:
            scope.cancel()
        self._work.clear()
        self._courier.abandon(self.name)
        self._deadline = None
        self._doing = ""
        self._answered = False
        self._unload_sent = False
        self._epoch += 1
        self._since = now

    def note(self, trigger: str, reason: str, model: str | None = None) -> None:
        """Record and publish something done for this slot from outside its rules.

        The state stays; ``trigger`` names what happened (``cleanup``,
        ``slot_added``, ``reconfigured`` ...).
        """
        state = self.state
        self._keep(state, state, trigger, anyio.current_time(), model, reason)
        self._snapshot = None

    def reconfigure(self, config: SlotConfig) -> None:
        """Use ``config`` from the next decision on (a running timer keeps its length)."""
        self.config = config
        self._machine.config = config

    def stop(self) -> None:
        """Stop the actor (its :meth:`run` returns; whoever waits is answered)."""
        self._scope.cancel()

    def _sync(self) -> None:
        """Tell the ledger what this slot owns now (it is the only writer of that)."""
        data = self._machine.data
        loading = data.target.name if data.target and self.state is SlotState.LOADING else None
        self._ledger.sync(self.name, held=data.model, loading=loading, leaving=data.leaving)

    def _arm_timer(self, now: float) -> None:
        """Arm the state timer the rule table declares for the state just entered at ``now``."""
        timer = TIMERS.get(self.state)
        if timer is not None:
            self._timer_seconds = getattr(self.config, timer.seconds)
            self._deadline = now + self._timer_seconds

    def _timer_fired(self) -> _Envelope | None:
        """The state timer's event, once its deadline passed with the mailbox empty.

        Like gen_statem's ``state_timeout``, the timer is part of the wait,
        not a task of its own: leaving the state disarms it, and it fires
        only after whatever arrived before it.
        """
        self._deadline = None
        if self._answered:  # the load answered in time: only the /health re-read is left
            return None
        return _Envelope(self._timed_out(), epoch=self._epoch)

    def _timed_out(self) -> Event:
        """The loading state's timer (ADR-0007 §3): the load is abandoned, never retried."""
        seconds = self._timer_seconds
        target = self._machine.data.target
        name = target.name if target is not None else "?"
        doing = self._doing or f"validating {name!r}"
        failure = Failure(
            PreloadError.LOAD_TIMEOUT,
            f"loading {name!r} did not finish within {seconds:g} s (the timer fired while"
            f" {doing}); not retried",
            path=target.path if target is not None else None,
            model=name,
            expected=f"a loaded model within {seconds:g} s",
            found=f"still {doing}",
        )
        return LoadTimedOut(failure, kept=self._kept())

    def _kept(self) -> str | None:
        """The old model of a swap whose unload has not gone out: the slot still holds it."""
        return None if self._unload_sent else self._machine.data.leaving

    def _record(self, step: Step, before: SlotData, at: float) -> None:
        """Keep and publish a transition (a change of state, or a guarded internal one).

        ``at`` is the event's own time where it has one (the slot's one clock:
        the idle guard compares the same values the history shows).
        """
        assert step.rule is not None
        data = self._machine.data
        failure = data.error if data.error is not before.error else None  # only news
        model = data.model or (data.target.name if data.target else None)
        self._keep(
            step.source,
            step.dest,
            step.rule.trigger.value,
            at,
            failure.model if failure is not None and failure.model else model,
            str(failure) if failure else step.rule.label,
            failure,
        )

    def _keep(
        self,
        source: SlotState,
        dest: SlotState,
        trigger: str,
        at: float,
        model: str | None,
        reason: str,
        failure: Failure | None = None,
    ) -> None:
        """Number, keep, log (one line) and publish a record."""
        record = SlotTransition(
            self.name,
            source,
            dest,
            trigger,
            at,
            model,
            failure,
            reason,
            id=self._next_id(),
            wall_at=at + self._wall_offset,
        )
        self._history.append(record)
        level = logging.WARNING if failure else logging.INFO
        if logger.isEnabledFor(level):
            extra = {
                "slot": record.slot,
                "model": record.model,
                "trigger": record.trigger,
                "failure": failure.kind.code if failure is not None else None,
            }
            logger.log(level, "%s", record, extra=extra)
        try:
            self._publish(record)
        except Exception:  # a subscriber's defect must not stop the slot
            logger.exception("slot %s: publishing a transition failed", self.name)

    def _make_snapshot(self, leaving: tuple[str, ...], cleanups: tuple[str, ...]) -> SlotSnapshot:
        data = self._machine.data
        return SlotSnapshot(
            slot=self.name,
            state=self.state,
            model=data.model,
            error=data.error,
            target=data.target.name if data.target is not None else None,
            leaving=leaving,
            cleanups=cleanups,
            since=self._since,
            in_use=data.in_use,
            history=tuple(self._history),
            unverified=data.unverified and data.model is not None,
            checkpoint_confirmed=data.confirmed if data.model is not None else None,
            wall_since=self._since + self._wall_offset,
        )

    # -- state-owned work ----------------------------------------------------------------

    def _start(self, effect: Effect) -> None:
        """Start ``effect``: at once where nothing must be awaited first, else as state-owned work.

        A validation the fingerprint cache answers is queued at once, behind
        whatever the mailbox holds.  A plain unload, and a load whose
        preflight is already answered, go straight to the courier, whose
        request reports back to this slot if it still waits when the answer
        comes.  The rest — hashing, asking the server, a swap's unload of the
        old model — is work the state owns, cancelled when the state is left.
        """
        try:
            if self._start_now(effect):
                return
        except Exception as exc:
            self._post(self._crashed(effect, exc), self._epoch)
            return
        scope = anyio.CancelScope()
        self._work.add(scope)
        self._task_group.start_soon(self._run_work, scope, self._epoch, effect)

    def _start_now(self, effect: Effect) -> bool:
        """Do ``effect`` without awaiting anything, if it can be; ``False`` if not."""
        if isinstance(effect, StartValidation):
            known = self._validate_cached(effect.entry)  # ADR-0007 §1: a stat, no hash
            if known is NEEDS_HASH:
                return False
            self._post(Validated(effect.entry, known), self._epoch)
            return True
        if isinstance(effect, CallUnload):
            answered = functools.partial(self._unloaded, self._epoch, effect.model)
            self._courier.send_unload(self.name, effect.model, answered)
            return True
        name = effect.entry.name
        if effect.replaces is not None or self._courier.cleaning(name) is not None:
            return False
        known_preflight = self._preflight_now(effect.entry, self.config)
        if known_preflight is None:
            return False
        refusal = self._send_load(effect, *known_preflight)
        if refusal is not None:
            self._post(refusal, self._epoch)
        return True

    def _post(self, event: Event, epoch: int) -> None:
        """Queue the result of this slot's work, for the state visit ``epoch``."""
        self._mailbox.put(_Envelope(event, epoch=epoch))

    async def _run_work(self, scope: anyio.CancelScope, epoch: int, effect: Effect) -> None:
        with scope:
            try:
                event = await self._perform(effect)
            except Exception as exc:
                event = self._crashed(effect, exc)
            if event is not None:
                self._post(event, epoch)
        self._work.discard(scope)

    async def _perform(self, effect: Effect) -> Event | None:
        if isinstance(effect, StartValidation):
            # ADR-0007 §1: the file is proven sound before the server hears of it.
            return Validated(effect.entry, await self._validate(effect.entry))
        assert isinstance(effect, CallLoad), effect
        return await self._prepare_load(effect)

    async def _prepare_load(self, effect: CallLoad) -> Event | None:
        """Ask the server, unload the model being replaced, then send ``/load`` once (ADR-0007 §3).

        The ``loading`` state timer covers all of it; when it fires the
        requests are abandoned — never sent again — and the ledger keeps
        track of what they may still do.  A failed unload of the old model
        stops the swap before the load: the slot keeps the old model.  A
        clean-up of the same name in flight is waited for first, so that it
        cannot undo this load.  Returns the refusal, or ``None`` once the
        ``/load`` is sent (its answer reports back by itself).
        """
        name = effect.entry.name
        old = effect.replaces
        self._doing = f"asking the server about {name!r}; nothing sent"
        refused, confirmed = await self._preflight(effect.entry, self.config)
        if refused is None and old is not None:
            self._doing = f"unloading the old model {old!r}; /load of {name!r} not sent"
            self._unload_sent = True
            answer, error = await self._courier.unload(self.name, old)
            if answer not in (Answer.DONE, Answer.NOT_LOADED):
                failure = Failure(
                    PreloadError.UNLOAD_FAILED,
                    f"unloading {old!r} before loading {name!r} failed ({error});"
                    f" {name!r} was not sent, {old!r} is kept",
                    model=old,
                )
                return LoadFailed(failure, kept=old)
        while (cleaning := self._courier.cleaning(name)) is not None:
            self._doing = f"waiting for a clean-up of {name!r} to answer; /load not sent"
            await cleaning.wait()
        return self._send_load(effect, refused, confirmed)

    def _send_load(
        self, effect: CallLoad, refused: Failure | None, confirmed: bool | None
    ) -> Event | None:
        """Send the ``/load`` the preflight allows; the refusal if it does not."""
        if refused is not None:
            return LoadFailed(refused, kept=effect.replaces)
        name = effect.entry.name
        self._doing = f"waiting for the /load of {name!r}"
        answered = functools.partial(self._load_answered, self._epoch, effect, confirmed)
        self._courier.send_load(self.name, name, self.config.load_options, answered)
        return None

    async def _load_answered(
        self, epoch: int, effect: CallLoad, confirmed: bool | None, outcome: RequestOutcome
    ) -> None:
        """The ``/load`` answered while the slot waits: re-read ``/health``, then report.

        Whatever the answer, ``/health`` is read again before the slot
        settles, because even a 200 can hide an evict-all of every other
        model (ADR-0007).  Runs in the request's task; a defect here becomes
        the slot's error, never the controller's.
        """
        try:
            event = await self._after_load(effect, confirmed, outcome)
        except Exception as exc:
            event = self._crashed(effect, exc)
        self._post(event, epoch)

    async def _after_load(
        self, effect: CallLoad, confirmed: bool | None, outcome: RequestOutcome
    ) -> Event:
        answer, error = outcome
        name = effect.entry.name
        event: Event
        if answer is Answer.DONE:
            event = LoadSucceeded(name, anyio.current_time(), self._sequence(), confirmed)
            cause = f"the server made room for {name!r} (its LRU), loaded by slot {self.name!r}"
        else:
            failure = Failure(
                PreloadError.LOAD_FAILED,
                f"loading {name!r} failed: {error}",
                path=effect.entry.path,
                model=name,
            )
            event = LoadFailed(failure)
            cause = f"the server's evict-all after slot {self.name!r} failed to load {name!r}"
        self._answered = True
        await self._reconcile(cause)
        if isinstance(event, LoadSucceeded):
            loaded = self._loaded_file(name)
            if loaded is not None and not same_file(loaded, effect.entry.path):
                warning = Failure(
                    PreloadError.CHECKPOINT_MISMATCH,
                    f"the server loaded {loaded!r} for {name!r}, not the validated file",
                    path=effect.entry.path,
                    model=name,
                    expected=effect.entry.path,
                    found=loaded,
                )
                event = attrs.evolve(event, confirmed=False, warning=warning)
        return event

    async def _unloaded(self, epoch: int, model: str, outcome: RequestOutcome) -> None:
        """The ``/unload`` answered while the slot waits: report it."""
        answer, error = outcome
        event: Event
        if answer in (Answer.DONE, Answer.NOT_LOADED):
            event = Unloaded(model, was_loaded=answer is Answer.DONE)
        else:
            failure = Failure(
                PreloadError.UNLOAD_FAILED, f"unloading {model!r} failed: {error}", model=model
            )
            event = UnloadFailed(failure, anyio.current_time())
        self._post(event, epoch)

    def _crashed(self, effect: Effect, exc: Exception) -> Event:
        """Log a defect in this slot's work; the event that takes the slot to ``error``."""
        logger.exception("slot %s: %s raised", self.name, type(effect).__name__)
        return _crash_event(effect, exc)


def _crash_event(effect: Effect, exc: Exception) -> Event:
    """The event that takes a slot to ``error`` when its own work raised."""
    message = f"{type(effect).__name__} raised {type(exc).__name__}: {exc}"
    if isinstance(effect, StartValidation):
        failure = Failure(PreloadError.INTERNAL, message, path=effect.entry.path)
        return Validated(effect.entry, failure)
    if isinstance(effect, CallLoad):
        return LoadFailed(Failure(PreloadError.INTERNAL, message, model=effect.entry.name))
    return UnloadFailed(Failure(PreloadError.INTERNAL, message, model=effect.model))
