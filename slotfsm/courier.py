"""The courier: sends ``/load`` and ``/unload`` for the slots, and keeps listening.

A slot that stops waiting for an answer — its load timer fired, or it was
cancelled — does not stop the request: the server goes on with it either way
(a real Lemonade finishes a load whose client went away).  So every request
runs in a task of the controller's, not of the slot's, and its answer always
reaches the ledger (:mod:`slotfsm.ledger`).  A load that lands after its slot
gave up is unloaded at once: it was never adopted (ADR-0007 §3).

The courier never retries a ``/load``.  The one request it sends on its own
is the clean-up ``/unload`` of a name nobody owns, by name, never empty.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio
import httpx
from anyio.abc import TaskGroup

from slotfsm.config import LoadOption
from slotfsm.ledger import Answer, Ledger, Ticket
from slotfsm.lemonade import LemonadeClient, LemonadeError, ServerHTTPError

__all__ = ["Courier", "Outcome"]

logger = logging.getLogger("slotfsm")

Outcome = tuple[Answer, LemonadeError | None]
"""How a request ended, and the client's error when it did not succeed."""


def _classify(exc: LemonadeError) -> Answer:
    if isinstance(exc, ServerHTTPError):
        return Answer.REFUSED
    if isinstance(exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout):
        return Answer.NEVER_SENT
    return Answer.LOST


class Courier:
    """Runs requests in ``task_group`` and reports every answer to ``ledger``."""

    def __init__(
        self,
        client: LemonadeClient,
        ledger: Ledger,
        task_group: Callable[[], TaskGroup],
        cleaned: Callable[[str, str | None], None] = lambda name, origin: None,
    ) -> None:
        self._client = client
        self._cleaned = cleaned
        self._ledger = ledger
        self._task_group = task_group
        self._cleaning: dict[str, anyio.Event] = {}
        self._again: set[str] = set()
        self._waited: dict[str, set[Ticket]] = {}  # slot -> the requests it waits for

    def cleaning(self, name: str) -> anyio.Event | None:
        """The clean-up ``/unload`` of ``name`` in flight, if any (set once it is answered).

        A ``/load`` of the name must wait for it, so that the clean-up
        cannot undo the load.
        """
        return self._cleaning.get(name)

    def send_load(
        self,
        slot: str,
        name: str,
        options: Mapping[str, LoadOption],
        answered: Callable[[Outcome], Awaitable[None]],
    ) -> Ticket:
        """Send ``/load`` for ``slot`` now; ``answered(outcome)`` follows if the slot still waits.

        The slot stops waiting when it calls :meth:`abandon`: the request goes
        on, its answer is still recorded, and a model it brings up is cleaned
        up.  ``answered`` runs in the request's task, after the ledger has
        the answer.  No clean-up of ``name`` may be in flight (see
        :meth:`cleaning`).
        """
        assert name not in self._cleaning, f"a clean-up of {name} is in flight"
        ticket = self._ledger.sent(name, slot, "load")
        self._send(ticket, functools.partial(self._client.load, name, **options), answered)
        return ticket

    def send_unload(
        self, slot: str, name: str, answered: Callable[[Outcome], Awaitable[None]]
    ) -> Ticket:
        """Send ``/unload`` of ``name`` for ``slot`` now; as :meth:`send_load` for the rest."""
        ticket = self._ledger.sent(name, slot, "unload")
        self._send(ticket, functools.partial(self._client.unload, name), answered)
        return ticket

    async def unload(self, slot: str, name: str) -> Outcome:
        """Send ``/unload`` of ``name`` for ``slot`` and wait for its answer.

        Cancelling the wait abandons the request (see :meth:`abandon`): it
        goes on, and its answer reaches the ledger.
        """
        done = anyio.Event()
        box: list[Outcome] = []

        async def answered(outcome: Outcome) -> None:
            box.append(outcome)
            done.set()

        ticket = self.send_unload(slot, name, answered)
        try:
            await done.wait()
        except BaseException:
            self._let_go(ticket)
            raise
        return box[0]

    def clean_up(self, name: str) -> None:
        """Unload ``name``, which nobody owns, in the background (never waited for).

        When the server unloaded it, ``cleaned(name, origin)`` reports it.
        """
        entry = self._ledger.get(name)
        if entry is None or entry.owner is not None:
            return
        if entry.cleaning:  # once it answers, look again: a load may have landed meanwhile
            self._again.add(name)
            return
        logger.info("unloading %s: the server may hold it and no slot owns it", name)
        self._send_clean_up(name, entry.origin)

    def unload_unmanaged(self, name: str) -> None:
        """Unload ``name``, a model the ledger does not know (someone else loaded it).

        The controller's optional policy for idle unmanaged models: the name
        is in the ledger while its unload is in flight, and stays there (to be
        tried again when seen) only if that unload fails.
        """
        if name not in self._ledger:
            logger.info("unloading %s: loaded by someone else and idle too long", name)
            self._send_clean_up(name, None)

    def _send_clean_up(self, name: str, origin: str | None) -> None:
        ticket = self._ledger.sent(name, None, "unload")
        ticket.abandoned = True  # nobody waits for it
        ticket.origin = origin
        self._cleaning[name] = anyio.Event()
        send = functools.partial(self._client.unload, name)
        self._task_group().start_soon(self._run, ticket, send, None)

    def abandon(self, slot: str) -> None:
        """``slot`` stops waiting for its requests (its state changed): record it now.

        The requests go on; the ledger counts each unanswered ``/load`` as an
        arrival from this moment, and no answer is reported to the slot.
        """
        for ticket in self._waited.pop(slot, ()):
            if ticket.answer is None:
                self._ledger.abandoned(ticket)

    def _let_go(self, ticket: Ticket) -> None:
        """One waiter stops waiting for ``ticket``."""
        assert ticket.slot is not None
        waited = self._waited.get(ticket.slot)
        if waited is not None and ticket in waited:
            waited.discard(ticket)
            if ticket.answer is None:
                self._ledger.abandoned(ticket)

    def _send(
        self,
        ticket: Ticket,
        request: Callable[[], Awaitable[object]],
        answered: Callable[[Outcome], Awaitable[None]],
    ) -> None:
        assert ticket.slot is not None
        self._waited.setdefault(ticket.slot, set()).add(ticket)
        self._task_group().start_soon(self._run, ticket, request, answered)

    async def _run(
        self,
        ticket: Ticket,
        request: Callable[[], Awaitable[object]],
        answered: Callable[[Outcome], Awaitable[None]] | None,
    ) -> None:
        outcome: Outcome
        try:
            result = await request()
        except LemonadeError as exc:
            outcome = (_classify(exc), exc)
        except anyio.get_cancelled_exc_class():
            # The controller is closing: the answer stays unknown, and the
            # state file records the request as still in flight.
            raise
        except Exception as exc:  # a defect: the outcome is unknown
            logger.exception("%s of %s raised", ticket.kind, ticket.name)
            outcome = (Answer.LOST, LemonadeError(ticket.kind, repr(exc)))
        else:
            answer = Answer.NOT_LOADED if result is False else Answer.DONE
            outcome = (answer, None)
        if self._ledger.answered(ticket, outcome[0]):
            self.clean_up(ticket.name)
        if ticket.slot is None and outcome[1] is not None:
            logger.warning("clean-up unload of %s failed: %s", ticket.name, outcome[1])
        if ticket.slot is None:
            self._cleaning.pop(ticket.name).set()
            if outcome[0] is Answer.DONE:
                self._cleaned(ticket.name, ticket.origin)
            if ticket.name in self._again:
                self._again.discard(ticket.name)
                entry = self._ledger.get(ticket.name)
                if entry is not None and entry.stray:
                    self.clean_up(ticket.name)
        if answered is None or ticket.slot is None:
            return
        waited = self._waited.get(ticket.slot)
        if waited is not None and ticket in waited:  # the slot still waits for this answer
            waited.discard(ticket)
            await answered(outcome)
