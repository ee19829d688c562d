"""The models the fake server holds: ready order, per-type LRU, last use.

Plain synchronous bookkeeping; the caller passes ``last_use`` (milliseconds
of the server's clock).  Least recently used is decided by a sequence number
bumped at every use, so that two uses at the same (virtual) instant still
have an order.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import attrs

from slotfsm.testing._values import FakeModel

__all__ = ["Loaded", "Residency"]


@attrs.define
class Loaded:
    """One loaded model (one backend child on the real server)."""

    model: FakeModel
    options: dict[str, object]
    pid: int
    port: int
    last_use: int
    use_seq: int


class Residency:
    """The loaded models, in the order they became ready."""

    def __init__(self) -> None:
        self._loaded: dict[str, Loaded] = {}
        self._seq = itertools.count()
        self._backends = itertools.count()

    def names(self) -> list[str]:
        """Names of the loaded models, in the order they became ready."""
        return list(self._loaded)

    def entries(self) -> list[Loaded]:
        """The loaded models, in the order they became ready."""
        return list(self._loaded.values())

    def get(self, name: str) -> Loaded | None:
        """The loaded model of that name, or ``None``."""
        return self._loaded.get(name)

    def add(self, model: FakeModel, options: Mapping[str, object], last_use: int) -> Loaded:
        """Record a freshly started backend for ``model``."""
        n = next(self._backends)
        entry = Loaded(
            model=model,
            options=dict(options),
            pid=5_700 + n,
            port=8001 + n,
            last_use=last_use,
            use_seq=next(self._seq),
        )
        self._loaded[model.name] = entry
        return entry

    def touch(self, name: str, last_use: int) -> None:
        """Mark ``name`` as used at ``last_use``."""
        entry = self._loaded[name]
        entry.last_use = last_use
        entry.use_seq = next(self._seq)

    def remove(self, name: str) -> None:
        """Unload ``name`` (which must be loaded)."""
        del self._loaded[name]

    def clear(self) -> list[str]:
        """Unload everything; return what was loaded."""
        names = list(self._loaded)
        self._loaded.clear()
        return names

    def lru_victim(self, model_type: str, limit: int) -> Loaded | None:
        """The model to evict before one more of ``model_type`` fits, or ``None``.

        ``limit`` is that type's ``max_models`` (-1: unlimited).  The victim
        is the least recently used model of that type while the type is full.
        """
        if limit < 0:
            return None
        pool = [e for e in self._loaded.values() if e.model.type == model_type]
        if len(pool) < limit:
            return None
        return min(pool, key=lambda e: e.use_seq)

    def most_recent(self) -> Loaded | None:
        """The most recently used loaded model (``/health``'s ``model_loaded``)."""
        if not self._loaded:
            return None
        return max(self._loaded.values(), key=lambda e: e.use_seq)
