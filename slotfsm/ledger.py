"""The residency ledger: every model the server may hold because of us.

One ledger per controller, keyed by the server's canonical model name (the
name ``/health`` lists).  For each name it knows the owning slot (at most
one, by construction: it is one field) and what the server may be doing with
the name because of requests we sent (ADR-0007 §4):

* the owner's phase: ``loading`` (its ``/load`` is in flight), ``held``, or
  ``leaving`` (its ``/unload`` is in flight — a swap's old model stays owned
  by the swapping slot until that unload is answered);
* **arrivals**: ``/load`` requests a slot gave up on (a timeout, a cancel)
  that are still in flight.  Each one is counted: two abandoned loads of the
  same model are two arrivals, and each may bring the model up;
* **stray**: the name may be on the server with nobody managing it (an
  arrival that landed, an answer that was lost, an unload that failed).

A name leaves the ledger only on proof: an ``/unload`` answered 200 or 404
while no ``/load`` of it is still in flight, or a ``/health`` reading sent
after every request for it was answered that does not list it.  A request
refused at connect time never happened and proves nothing either way.

The ledger is pure bookkeeping: it does no I/O and never waits.  The courier
(:mod:`slotfsm.courier`) sends the requests and reports their answers here;
each slot's actor reports what its slot owns after every step.  Everything
runs on one event loop, and no method awaits, so each call is atomic.  Its
indexes (names by owner, by origin, ownerless, restored; claims by name) make
what a slot or an answer asks cost what that slot or name has, not the size
of the ledger.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

from slotfsm.errors import ModelInUseError

if TYPE_CHECKING:
    from slotfsm.lemonade import Health

__all__ = ["Answer", "Entry", "Ledger", "Phase", "Ticket"]


class Phase(enum.StrEnum):
    """What the owning slot is doing with a name."""

    LOADING = "loading"
    HELD = "held"
    LEAVING = "leaving"


class Answer(enum.Enum):
    """How a ``/load`` or ``/unload`` request ended, as far as the server is concerned."""

    DONE = "done"
    """200: the load happened / the model is unloaded."""
    NOT_LOADED = "not_loaded"
    """``/unload`` answered 404 "Model not loaded": not loaded (yet)."""
    REFUSED = "refused"
    """Any other answer from the server: the request did not do what it asked."""
    LOST = "lost"
    """Sent, but no answer came (dropped connection, timeout): outcome unknown."""
    NEVER_SENT = "never_sent"
    """Refused at connect time: the server never saw the request."""


@attrs.define(eq=False)
class Ticket:
    """One request in flight for ``name``, sent for ``slot`` (``None``: the clean-up)."""

    name: str
    slot: str | None
    kind: str  # "load" or "unload"
    abandoned: bool = False
    answer: Answer | None = None
    quiet_since: int | None = None
    """For an unload: the entry's load count when it was sent with no load in flight."""
    origin: str | None = None
    """For a clean-up: the slot whose work left the name behind."""


@attrs.define
class Entry:
    """What the ledger knows about one canonical model name."""

    name: str
    owner: str | None = None
    phase: Phase | None = None
    origin: str | None = None
    """For a name with no owner: the slot whose work left it behind."""
    loads: int = 0
    """``/load`` requests of this name in flight (an owner's and abandoned ones)."""
    unloads: int = 0
    """``/unload`` requests of this name in flight."""
    arrivals: int = 0
    """Abandoned ``/load`` requests still in flight (counted in ``loads`` too)."""
    stray: bool = False
    """The server may hold it with nobody managing it: it is cleaned up when seen."""
    restored: bool = False
    """Recorded by an earlier controller as possibly arriving: settled by our next answered load."""
    cleaning: bool = False
    """The clean-up ``/unload`` is in flight."""
    settled_seq: int = 0
    """The sequence number taken when the latest request for the name was answered."""
    gone: bool = False
    """The owner's unload of it was answered (200 or 404) with no load in flight meanwhile."""
    loads_seen: int = 0
    """Loads of this name sent or answered so far: an unload proves absence only if none
    happened while it was in flight."""

    @property
    def pending(self) -> int:
        """Requests of this name in flight."""
        return self.loads + self.unloads

    @property
    def owed(self) -> bool:
        """No owner, but the server may hold (or still bring up) the name because of us."""
        return self.owner is None and (
            self.stray or self.arrivals > 0 or self.restored or self.pending > 0
        )


class Ledger:
    """Every model the server may hold because of us, by canonical name (ADR-0007 §4).

    ``sequence`` is the controller's sequence counter, shared with the
    ``/health`` readings so that a reading can be ordered against answers.
    ``changed`` is called after every change (the state file listens).
    """

    def __init__(
        self, sequence: Callable[[], int], changed: Callable[[], None] | None = None
    ) -> None:
        self._entries: dict[str, Entry] = {}
        self._claims: dict[str, Counter[str]] = {}  # name -> slot -> load commands waiting
        self._sequence = sequence
        self._changed = changed or (lambda: None)
        # Indexes, kept by _entry, _assign and _settle (dicts as ordered sets):
        self._born: dict[str, int] = {}  # name -> creation number: entries() order
        self._births = itertools.count()
        self._owned: dict[str, dict[str, None]] = {}  # slot -> names it owns
        self._left: dict[str, dict[str, None]] = {}  # slot -> names whose origin it is
        self._ownerless: dict[str, None] = {}
        self._restored: dict[str, None] = {}

    # -- reading ---------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> Entry | None:
        """The entry for ``name``, or ``None``."""
        return self._entries.get(name)

    def entries(self) -> Mapping[str, Entry]:
        """Every entry, by name (a live view: do not change it)."""
        return self._entries

    def owner_of(self, name: str) -> str | None:
        """The slot that owns ``name``, or ``None``."""
        entry = self._entries.get(name)
        return entry.owner if entry is not None else None

    def owned_by(self, slot: str, phase: Phase | None = None) -> tuple[str, ...]:
        """The names ``slot`` owns (in ``phase``, when given), in :meth:`entries` order."""
        owned = self._owned.get(slot)
        if not owned:
            return ()
        entries = self._entries
        return self._in_order(n for n in owned if phase is None or entries[n].phase is phase)

    def cleanups_of(self, slot: str) -> tuple[str, ...]:
        """Names ``slot``'s work left on the server (or on its way) with no owner."""
        left = self._left.get(slot)
        if not left:
            return ()
        entries = self._entries
        return self._in_order(n for n in left if entries[n].owed)

    def owed(self) -> tuple[str, ...]:
        """Every name the server may hold because of us that no slot owns."""
        entries = self._entries
        return self._in_order(n for n in self._ownerless if entries[n].owed)

    def owners(self) -> tuple[str, ...]:
        """The slots that own a name."""
        return tuple(self._owned)

    def claimants(self) -> tuple[str, ...]:
        """The slots with a load command not answered yet (see :meth:`reserve`)."""
        return tuple(dict.fromkeys(slot for claims in self._claims.values() for slot in claims))

    # -- claims -------------------------------------------------------------------

    def check_claim(self, slot: str, name: str) -> None:
        """Raise :class:`ModelInUseError` unless ``slot`` may take ``name``.

        Another slot may own it, have a load of it queued, have left it on the
        server (an arrival or a stray not yet cleaned up), or its clean-up may
        be under way.  The slot that left a name behind may take it again.
        """
        for other, count in self._claims.get(name, {}).items():
            if other != slot and count:
                raise ModelInUseError(f"model {name!r} is in use by slot {other!r}")
        entry = self._entries.get(name)
        if entry is None:
            return
        if entry.owner is not None and entry.owner != slot:
            raise ModelInUseError(f"model {name!r} is in use by slot {entry.owner!r}")
        if (entry.owed or entry.cleaning) and entry.origin not in (None, slot):
            raise ModelInUseError(
                f"slot {entry.origin!r} may still have model {name!r} on the server"
                " (a load that timed out or whose answer was lost); it is unloaded when it"
                " shows up"
            )

    def reserve(self, slot: str, name: str) -> None:
        """Hold ``name`` for a load command of ``slot`` until the slot answers it."""
        self.check_claim(slot, name)
        self._claims.setdefault(name, Counter())[slot] += 1

    def release(self, slot: str, name: str) -> None:
        """The load command of ``slot`` for ``name`` was answered."""
        claims = self._claims.get(name)
        if claims is None:
            return
        claims[slot] -= 1
        if claims[slot] <= 0:
            del claims[slot]
            if not claims:
                del self._claims[name]

    # -- what a slot owns ---------------------------------------------------------

    def sync(
        self,
        slot: str,
        *,
        held: str | None = None,
        loading: str | None = None,
        leaving: str | None = None,
    ) -> None:
        """Record what ``slot`` owns after a step of its actor.

        Names the slot no longer mentions are released: they leave the
        ledger unless a request for them is in flight or they may be on the
        server (then they stay, ownerless, to be cleaned up).  A name still
        leaving — its ``/unload`` unanswered — stays owned until the answer.
        """
        wanted = {n: p for n, p in ((held, Phase.HELD), (loading, Phase.LOADING)) if n}
        if leaving:
            wanted[leaving] = Phase.LEAVING
        touched = False
        for name in self.owned_by(slot):
            entry = self._entries[name]
            if name in wanted:
                continue
            if entry.phase is Phase.LEAVING and entry.unloads:
                continue  # owned until its unload is answered
            if entry.phase is Phase.LEAVING and not entry.gone:
                entry.stray = True  # released before its unload went out: still there
            self._assign(entry, None, None, slot)
            self._settle(entry)
            touched = True
        for name, phase in wanted.items():
            entry = self._entry(name)
            if entry.owner is not None and entry.owner != slot:  # guarded by check_claim
                raise ModelInUseError(f"model {name!r} is owned by slot {entry.owner!r}")
            if entry.owner != slot or entry.phase is not phase:
                self._assign(entry, slot, phase, None)
                entry.gone = False
                if phase is Phase.HELD:
                    entry.stray = False
                    self._set_restored(entry, False)
                touched = True
        if touched:
            self._changed()

    # -- requests -----------------------------------------------------------------

    def sent(self, name: str, slot: str | None, kind: str) -> Ticket:
        """A request is about to be sent; the returned ticket follows it."""
        entry = self._entry(name)
        ticket = Ticket(name, slot, kind)
        if kind == "load":
            entry.loads += 1
            entry.loads_seen += 1
        else:
            entry.unloads += 1
            if slot is None:
                entry.cleaning = True
            if not entry.loads:
                ticket.quiet_since = entry.loads_seen
        self._changed()
        return ticket

    def abandoned(self, ticket: Ticket) -> None:
        """The slot stopped waiting for ``ticket``'s answer (its timer fired, or a cancel).

        An unanswered ``/load`` becomes an arrival: it may still bring the
        model up.  (An answered one already left its mark: :meth:`answered`
        marks a name a load may have brought up as stray until its owner
        holds it.)
        """
        if ticket.abandoned:
            return
        ticket.abandoned = True
        entry = self._entries.get(ticket.name)
        if entry is not None and ticket.answer is None and ticket.kind == "load":
            entry.arrivals += 1
            self._changed()

    def answered(self, ticket: Ticket, answer: Answer) -> bool:
        """Record the answer to ``ticket``; True when the name now needs a clean-up.

        A clean-up is needed when a load landed that no slot holds or is
        loading (an abandoned load that arrived late).
        """
        ticket.answer = answer
        entry = self._entries.get(ticket.name)
        if entry is None:  # cannot happen: an entry with a request in flight stays
            return False
        if answer is not Answer.NEVER_SENT:
            entry.settled_seq = self._sequence()
        if ticket.kind == "load":
            entry.loads -= 1
            entry.loads_seen += 1
            if ticket.abandoned:
                entry.arrivals -= 1
            if answer in (Answer.DONE, Answer.REFUSED):
                self._loads_answered(entry.settled_seq)
            if answer in (Answer.DONE, Answer.LOST):
                entry.stray = (
                    True  # on the server (or may be): only its owner holding it clears this
                )
        else:
            entry.unloads -= 1
            if ticket.slot is None:
                entry.cleaning = False
            proof = ticket.quiet_since == entry.loads_seen  # no load sent or answered meanwhile
            if answer in (Answer.DONE, Answer.NOT_LOADED) and proof:
                entry.stray = False
                entry.gone = True
            elif answer in (Answer.REFUSED, Answer.LOST):
                entry.stray = True
            leaving = entry.phase is Phase.LEAVING and entry.owner is not None
            if leaving and not entry.unloads and ticket.abandoned:
                # The slot gave up waiting (its load timer fired during a swap): the
                # answer settles it here, since no step of the slot's will.
                self._assign(entry, None, None, entry.owner)
        needs_cleanup = entry.owner is None and answer is Answer.DONE and ticket.kind == "load"
        self._settle(entry)
        self._changed()
        return needs_cleanup

    def _loads_answered(self, seq: int) -> None:
        """Loads are served one at a time: an answered load settles every earlier one."""
        for name in list(self._restored):
            entry = self._entries[name]
            self._set_restored(entry, False)
            entry.stray = True  # it may have landed: the next reading decides
            entry.settled_seq = max(entry.settled_seq, seq)

    # -- readings -------------------------------------------------------------------

    def observed(self, health: Health, seq: int) -> tuple[str, ...]:
        """Compare ownerless names with a ``/health`` reading sent at ``seq``.

        Returns the names to clean up now (listed, nobody owns them, no
        unload in flight): a clean-up that failed is tried again at each
        reading that still lists the name, one ``/unload`` per poll at most.
        A name not listed, with no request in flight since before the reading
        was sent, leaves the ledger: proof.
        """
        cleanups: list[str] = []
        touched = False
        for name in self._in_order(self._ownerless):
            entry = self._entries[name]
            if entry.name in health:
                if entry.restored:  # what an earlier controller left in flight has landed
                    self._set_restored(entry, False)
                    entry.stray = touched = True
                if not entry.unloads and not entry.cleaning:
                    cleanups.append(entry.name)
            elif not entry.pending and not entry.restored and seq > entry.settled_seq:
                entry.stray = False
                self._settle(entry)
                touched = True
        if touched:
            self._changed()
        return tuple(cleanups)

    def _settle(self, entry: Entry) -> None:
        """Drop ``entry`` if nothing about it is left to prove."""
        if entry.owner is None and not entry.owed and not entry.cleaning:
            name = entry.name
            if self._entries.pop(name, None) is not None:  # not restored: it would be owed
                del self._ownerless[name], self._born[name]
                if entry.origin is not None:
                    _drop(self._left, entry.origin, name)

    # -- the indexes ------------------------------------------------------------------

    def _entry(self, name: str) -> Entry:
        """The entry for ``name``, made (ownerless) if there is none."""
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = Entry(name)
            self._born[name] = next(self._births)
            self._ownerless[name] = None
        return entry

    def _assign(
        self, entry: Entry, owner: str | None, phase: Phase | None, origin: str | None
    ) -> None:
        """Set ``entry``'s owner, phase and origin, and the indexes with them."""
        name = entry.name
        if owner != entry.owner:
            if entry.owner is None:
                del self._ownerless[name]
            else:
                _drop(self._owned, entry.owner, name)
            if owner is None:
                self._ownerless[name] = None
            else:
                self._owned.setdefault(owner, {})[name] = None
        if origin != entry.origin:
            if entry.origin is not None:
                _drop(self._left, entry.origin, name)
            if origin is not None:
                self._left.setdefault(origin, {})[name] = None
        entry.owner, entry.phase, entry.origin = owner, phase, origin

    def _in_order(self, names: Iterable[str]) -> tuple[str, ...]:
        """``names`` in :meth:`entries` order (the order a full scan would find them)."""
        found = tuple(names)
        if len(found) < 2:
            return found
        return tuple(sorted(found, key=self._born.__getitem__))

    def _set_restored(self, entry: Entry, restored: bool) -> None:
        entry.restored = restored
        if restored:
            self._restored[entry.name] = None
        else:
            self._restored.pop(entry.name, None)

    # -- the state file -----------------------------------------------------------

    def records(self) -> dict[str, dict[str, object]]:
        """What a restarted controller must know, as plain JSON values."""
        out: dict[str, dict[str, object]] = {}
        for name, e in sorted(self._entries.items()):
            record: dict[str, object] = {}
            if e.owner is not None and e.phase is not None:
                record["owner"] = e.owner
                record["phase"] = e.phase.value
            if e.owed:
                record["origin"] = e.origin
                record["arrivals"] = e.arrivals + (1 if e.restored else 0)
                record["stray"] = e.stray or e.pending > 0
            if record:
                out[name] = record
        return out

    def restore(self, records: Iterable[tuple[str, str | None, bool, bool]]) -> None:
        """Take over what an earlier controller left: ``(name, origin, arriving, stray)``.

        Nothing is owned after a restart until a slot resumes it; each name
        is owed, cleaned up when seen, and leaves on proof.
        """
        for name, origin, arriving, stray in records:
            entry = self._entry(name)
            self._assign(entry, entry.owner, entry.phase, entry.origin or origin)
            self._set_restored(entry, entry.restored or arriving)
            entry.stray = entry.stray or stray or not arriving

    def check(self) -> None:
        """Assert the ledger's own invariants, indexes included (for tests)."""
        for name, e in self._entries.items():
            assert e.name == name
            assert min(e.loads, e.unloads, e.arrivals) >= 0, e
            assert e.arrivals <= e.loads, e
            assert (e.owner is None) == (e.phase is None), e
            assert e.owner is not None or e.owed or e.cleaning, e
        entries = self._entries.values()
        assert list(self._born) == list(self._entries)
        assert sorted(self._born.values()) == list(self._born.values())
        assert self._ownerless.keys() == {e.name for e in entries if e.owner is None}
        assert self._restored.keys() == {e.name for e in entries if e.restored}
        for index, key in ((self._owned, "owner"), (self._left, "origin")):
            expected: dict[str, set[str]] = {}
            for e in entries:
                if getattr(e, key) is not None:
                    expected.setdefault(getattr(e, key), set()).add(e.name)
            assert {slot: set(names) for slot, names in index.items()} == expected, key
        assert all(counts and min(counts.values()) > 0 for counts in self._claims.values())


def _drop(index: dict[str, dict[str, None]], slot: str, name: str) -> None:
    """Remove ``name`` from ``slot``'s names in ``index`` (and the slot, once it has none)."""
    names = index[slot]
    del names[name]
    if not names:
        del index[slot]
