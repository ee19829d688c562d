"""The fake server's fault switches: on when made, off when undone.

A :class:`Switch` is returned by each of ``FakeLemonade``'s switch methods
(``hanging``, ``failing``, ...).  It is on from the call until :meth:`Switch.off`,
and as a context manager it turns itself off on exit::

    with fake.hanging("m"):
        ...  # loads of "m" hang here
    # and no longer here

Several switches of one kind on one model stack: the latest one on decides,
and the model is back to normal when all of them are off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Self, TypeVar

__all__ = ["Hang", "Switch", "Switchboard"]

T = TypeVar("T")


class Switch(Generic[T]):
    """One fault, on until :meth:`off` (or the end of its ``with`` block)."""

    def __init__(self, board: Switchboard, kind: str, key: str | None, value: T) -> None:
        self._board = board
        self.kind = kind
        self.key = key
        self.value = value
        self.on = True

    def off(self) -> None:
        """Turn the fault off (again: nothing happens)."""
        if self.on:
            self.on = False
            self._board.remove(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.off()

    def __repr__(self) -> str:
        state = "on" if self.on else "off"
        return f"<{type(self).__name__} {self.kind} {self.key!r} {state}>"


class Hang(Switch[None]):
    """A hanging start: :meth:`off` lets the hung starts become ready, :meth:`kill` fails them.

    ``starts`` is how many starts it still catches (``None``: every one);
    ``hung`` how many are hung on it now.
    """

    def __init__(self, board: Switchboard, key: str, starts: int | None) -> None:
        super().__init__(board, "hang", key, None)
        self.starts = starts
        self.hung = 0
        self.killed = 0

    def catch(self) -> bool:
        """Whether the start beginning now hangs on this switch (and count it)."""
        if not self.on or self.starts == 0:
            return False
        if self.starts is not None:
            self.starts -= 1
        return True

    def kill(self) -> None:
        """The hung starts die now (exit 137), as if someone killed the process.

        Each of them then fails like any crashed start: the evict-all and
        its one retry follow.  The switch stays on for the starts to come.
        """
        self.killed += 1
        self._board.changed()


class Switchboard:
    """Every switch that is on, by kind and key; calls ``changed`` on every flip."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._on: dict[tuple[str, str | None], list[Switch[object]]] = {}
        self.changed = changed

    def add(self, switch: Switch[T]) -> Switch[T]:
        """Turn ``switch`` on (it was made on)."""
        self._on.setdefault((switch.kind, switch.key), []).append(switch)  # type: ignore[arg-type]
        self.changed()
        return switch

    def remove(self, switch: Switch[T]) -> None:
        """Take ``switch`` off the board."""
        stack = self._on.get((switch.kind, switch.key), [])
        if switch in stack:
            stack.remove(switch)  # type: ignore[arg-type]
        if not stack:
            self._on.pop((switch.kind, switch.key), None)
        self.changed()

    def latest(self, kind: str, key: str | None = None) -> Switch[object] | None:
        """The switch of that kind and key turned on last, if any is on."""
        stack = self._on.get((kind, key))
        return stack[-1] if stack else None

    def all(self, kind: str, key: str | None = None) -> list[Switch[object]]:
        """Every switch of that kind and key that is on, oldest first."""
        return list(self._on.get((kind, key), ()))

    def clear(self) -> None:
        """Turn every switch off."""
        for stack in list(self._on.values()):
            for switch in list(stack):
                switch.off()
