"""One slot's actor: the only writer of that slot's state.

The actor owns a mailbox.  Callers' commands, the results of the slot's own
work and the server observations all arrive there as events, and the actor
feeds them one at a time to the rulebook.  Handling an event never waits:
the effects a transition asks for are started as *state-owned work* — tasks
that are cancelled the moment the slot leaves the state that started them —
and each reports back as one more event.  A result that arrives for a state
already left is refused as stale.

A failure inside the work (an HTTP error, an exception anywhere) becomes an
event that takes this slot to ``error``; it never escapes into the other
actors or the controller.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from slotfsm.config import SlotConfig
from slotfsm.errors import ControllerClosedError, Failure, PreloadError
from slotfsm.events import (
    CallLoad,
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
from slotfsm.lemonade import LemonadeClient, LemonadeError, ServerHTTPError
from slotfsm.rules import Outcome, Rulebook, SlotData, SlotMachine, SlotState, Step
from slotfsm.snapshot import SlotSnapshot, SlotTransition

if TYPE_CHECKING:
    from slotfsm.registry import ModelEntry

__all__ = ["SlotActor"]

logger = logging.getLogger("slotfsm")

Validator = Callable[["ModelEntry"], Awaitable[Failure | None]]


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


class SlotActor:
    """Runs one slot: mailbox in, rulebook in the middle, state-owned work out."""

    def __init__(
        self,
        config: SlotConfig,
        rulebook: Rulebook,
        *,
        client: LemonadeClient,
        validate: Validator,
        reconcile: Callable[[], Awaitable[None]],
        sequence: Callable[[], int],
        publish: Callable[[SlotTransition], None],
        history: int = 32,
        state: SlotState = SlotState.IDLE,
        data: SlotData | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._rulebook = rulebook
        self._client = client
        self._validate = validate
        self._reconcile = reconcile
        self._sequence = sequence
        self._publish = publish
        self._machine = SlotMachine(config, data)
        rulebook.attach(self._machine, state)
        self._send, self._receive = anyio.create_memory_object_stream[_Envelope](math.inf)
        self._postponed: deque[_Envelope] = deque()
        self._waiting: list[_Reply] = []
        self._epoch = 0
        self._work: set[anyio.CancelScope] = set()
        self._history: deque[SlotTransition] = deque(maxlen=history)
        self._since = 0.0
        self._task_group: TaskGroup | None = None
        self._snapshot = self._make_snapshot()

    # -- the outside -------------------------------------------------------------

    @property
    def snapshot(self) -> SlotSnapshot:
        """The slot as of its latest handled event."""
        return self._snapshot

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
        try:
            self._send.send_nowait(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ControllerClosedError(f"slot {self.name!r}: the controller is closed") from None

    # -- the loop -------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Handle the mailbox until cancelled; fail whoever still waits on exit."""
        self._since = anyio.current_time()
        self._snapshot = self._make_snapshot()
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_status.started()
                while True:
                    try:  # drain what is queued without a scheduling round-trip per event
                        envelope = self._receive.receive_nowait()
                    except anyio.WouldBlock:
                        envelope = await self._receive.receive()
                    self._handle(envelope)
                    if envelope.handled is not None:
                        envelope.handled()
        finally:
            self._send.close()
            unanswered = [*self._waiting, *(e.reply for e in self._postponed if e.reply)]
            while True:  # what is still in the mailbox is answered too
                try:
                    envelope = self._receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
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
                envelope.reply.resolve(self._snapshot)
            return
        if envelope.reply is not None:
            self._waiting.append(envelope.reply)
        if step.changed_state:
            self._leave_state()
        if step.notable:
            self._record(step, before)
        for effect in step.effects:
            self._start(effect)
        self._snapshot = self._make_snapshot()
        if self.state.settled and self._waiting:
            waiting, self._waiting = self._waiting, []
            for reply in waiting:
                reply.resolve(self._snapshot)
        if step.changed_state and self._postponed:
            postponed, self._postponed = self._postponed, deque()
            for again in postponed:
                self._handle(again)

    @property
    def state(self) -> SlotState:
        """The slot's current state."""
        return self._machine.state

    def detach(self) -> None:
        """Leave the shared rulebook (after the actor has stopped)."""
        self._rulebook.detach(self._machine)

    def _leave_state(self) -> None:
        """Cancel the work the old state owned: its results can no longer matter."""
        for scope in self._work:
            scope.cancel()
        self._work.clear()
        self._epoch += 1
        self._since = anyio.current_time()

    def _record(self, step: Step, before: SlotData) -> None:
        """Keep and publish a transition (a change of state, or a guarded internal one)."""
        assert step.rule is not None
        data = self._machine.data
        failure = data.error if data.error is not before.error else None  # only news
        model = data.model or (data.target.name if data.target else None)
        record = SlotTransition(
            slot=self.name,
            source=step.source,
            dest=step.dest,
            trigger=step.rule.trigger.value,
            at=anyio.current_time(),
            model=failure.model if failure is not None and failure.model else model,
            failure=failure,
            reason=str(failure) if failure else step.rule.label,
        )
        self._history.append(record)
        (logger.warning if failure else logger.info)("%s", record)
        try:
            self._publish(record)
        except Exception:  # a subscriber's defect must not stop the slot
            logger.exception("slot %s: publishing a transition failed", self.name)

    def _make_snapshot(self) -> SlotSnapshot:
        data = self._machine.data
        return SlotSnapshot(
            slot=self.name,
            state=self.state,
            model=data.model,
            error=data.error,
            target=data.target.name if data.target is not None else None,
            stray=data.stray,
            since=self._since,
            in_use=data.in_use,
            history=tuple(self._history),
        )

    # -- state-owned work ----------------------------------------------------------------

    def _start(self, effect: Effect) -> None:
        assert self._task_group is not None, "the actor is not running"
        scope = anyio.CancelScope()
        self._work.add(scope)
        self._task_group.start_soon(self._run_work, scope, self._epoch, effect)

    async def _run_work(self, scope: anyio.CancelScope, epoch: int, effect: Effect) -> None:
        with scope:
            try:
                event = await self._perform(effect)
            except Exception as exc:
                logger.exception("slot %s: %s raised", self.name, type(effect).__name__)
                event = _crashed(effect, exc)
            with contextlib.suppress(anyio.ClosedResourceError):
                self._send.send_nowait(_Envelope(event, epoch=epoch))
        self._work.discard(scope)

    async def _perform(self, effect: Effect) -> Event:
        if isinstance(effect, StartValidation):
            # ADR-0007 §1: the file is proven sound before the server hears of it.
            return Validated(effect.entry, await self._validate(effect.entry))
        if isinstance(effect, CallLoad):
            return await self._load(effect)
        return await self._unload(effect.model)

    async def _load(self, effect: CallLoad) -> Event:
        """Send ``/load`` once, under the ``loading`` state timer (ADR-0007 §3).

        The timer is the slot's ``load_timeout``; it covers unloading the model
        being replaced and the load itself.  When it fires the request is
        abandoned and never sent again.  Whatever the outcome, ``/health`` is
        read again before the slot settles, because even a 200 can hide an
        evict-all of every other model.
        """
        name = effect.entry.name
        timeout = self.config.load_timeout
        stray = effect.replaces  # what the server may hold for us if we stop here
        left = None  # a replaced stray the server did not hold yet: it may still arrive
        event: Event
        with anyio.move_on_after(timeout) as timer:
            try:
                if effect.replaces is not None:
                    held = await self._client.unload(effect.replaces)
                    left = effect.replaces if effect.replaces_stray and not held else None
                stray = name  # from here on, the server may bring the new model up
                await self._client.load(name, **self.config.load_options)
                event = LoadSucceeded(name, anyio.current_time(), self._sequence(), left)
            except LemonadeError as exc:
                if isinstance(exc, ServerHTTPError) and stray == name:
                    stray = left  # the server answered: the load did not happen
                failure = Failure(
                    PreloadError.LOAD_FAILED,
                    f"loading {name!r} failed: {exc}",
                    path=effect.entry.path,
                    model=name,
                )
                event = LoadFailed(failure, stray=stray)
        if timer.cancelled_caught:
            failure = Failure(
                PreloadError.LOAD_TIMEOUT,
                f"/load of {name!r} did not answer within {timeout:g} s; not retried",
                path=effect.entry.path,
                model=name,
                expected=f"an answer within {timeout:g} s",
                found="no answer",
            )
            event = LoadTimedOut(failure, stray=stray)
        await self._reconcile()
        return event

    async def _unload(self, model: str) -> Event:
        try:
            held = await self._client.unload(model)
        except LemonadeError as exc:
            return UnloadFailed(
                Failure(
                    PreloadError.UNLOAD_FAILED, f"unloading {model!r} failed: {exc}", model=model
                )
            )
        return Unloaded(model, was_loaded=held)


def _crashed(effect: Effect, exc: Exception) -> Event:
    """The event that takes a slot to ``error`` when its own work raised."""
    message = f"{type(effect).__name__} raised {type(exc).__name__}: {exc}"
    if isinstance(effect, StartValidation):
        failure = Failure(PreloadError.INTERNAL, message, path=effect.entry.path)
        return Validated(effect.entry, failure)
    if isinstance(effect, CallLoad):
        return LoadFailed(Failure(PreloadError.INTERNAL, message, model=effect.entry.name))
    return UnloadFailed(Failure(PreloadError.INTERNAL, message, model=effect.model))
