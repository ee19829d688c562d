"""What can go wrong, as values and as exceptions.

A failed load is a *state*, not an exception: the slot moves to ``error`` (or
stays ``loaded`` after a refused swap) and its snapshot carries a
:class:`Failure`.  Exceptions are kept for misuse of the API (an unknown slot
name, bad configuration) and for the HTTP client's typed errors, which the
engine turns into failures.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "ConfigError",
    "ControllerClosedError",
    "GraphvizMissingError",
    "LemonadeError",
    "ServerHTTPError",
    "ServerParseError",
    "ServerTimeout",
    "ServerUnreachable",
    "ValidationStopped",
    "Failure",
    "FailureError",
    "ModelInUseError",
    "PreloadError",
    "RegistryError",
    "SlotfsmError",
    "UnknownModelError",
    "UnknownSlotError",
]


class PreloadError(enum.Enum):
    """The kind of every failure a slot can report.

    The first six are pre-load validation (ADR-0007 §1), decided on disk
    before Lemonade hears of the model.  ``LOAD_TIMEOUT`` is the load timeout
    (ADR-0007 §3).  The rest describe what the server did.
    """

    FILE_MISSING = "file_missing"
    """Nothing at the path (or a symlink whose target is gone)."""
    NOT_A_FILE = "not_a_file"
    """A directory, FIFO, socket or device: decided by ``stat``, never opened."""
    UNREADABLE = "unreadable"
    """The file exists but cannot be opened or read (permissions, I/O error)."""
    SIZE_MISMATCH = "size_mismatch"
    """The size on disk differs from the registry's."""
    BAD_MAGIC = "bad_magic"
    """A GGUF asset that does not start with ``GGUF`` or is under 24 bytes."""
    SHA256_MISMATCH = "sha256_mismatch"
    """The bytes do not hash to the registry's sha256."""
    LOAD_TIMEOUT = "load_timeout"
    """``/load`` did not answer within the slot's ``load_timeout``; never retried."""
    LOAD_FAILED = "load_failed"
    """``/load`` answered with an error (or could not be sent)."""
    UNLOAD_FAILED = "unload_failed"
    """``/unload`` answered with an error (or could not be sent)."""
    EVICTED = "evicted"
    """The server no longer holds the slot's model (LRU, evict-all, restart)."""
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    """The server would load (or loaded) a different file than the one validated."""
    OPTION_REFUSED = "option_refused"
    """A load option the server would reject with an evict-all; nothing was sent."""
    CANCELLED = "cancelled"
    """The slot's work was stopped by ``Controller.cancel``."""
    INTERNAL = "internal"
    """An unexpected exception inside the slot's own work."""

    @property
    def code(self) -> str:
        """The stable lower-case code string of this kind, for APIs and logs."""
        return str(self.value)

    @property
    def is_validation(self) -> bool:
        """True for the kinds decided by pre-load validation."""
        return self in _VALIDATION_KINDS


_VALIDATION_KINDS = frozenset(
    {
        PreloadError.FILE_MISSING,
        PreloadError.NOT_A_FILE,
        PreloadError.UNREADABLE,
        PreloadError.SIZE_MISMATCH,
        PreloadError.BAD_MAGIC,
        PreloadError.SHA256_MISMATCH,
    }
)


@attrs.frozen
class Failure:
    """One failure, with the facts a person needs to act on it.

    ``expected`` and ``found`` are filled where a comparison failed (a size,
    a sha256, a magic); ``path`` where a file was involved; ``model`` where a
    model name was.  ``message`` is the whole story in one line.
    """

    kind: PreloadError
    message: str
    path: str | None = None
    model: str | None = None
    expected: str | None = None
    found: str | None = None

    def __str__(self) -> str:
        return f"{self.kind.name}: {self.message}"

    def to_dict(self) -> dict[str, str | None]:
        """The failure in plain JSON types; ``kind`` is its stable :attr:`PreloadError.code`."""
        return {
            "kind": self.kind.code,
            "message": self.message,
            "path": self.path,
            "model": self.model,
            "expected": self.expected,
            "found": self.found,
        }


class SlotfsmError(Exception):
    """Base class of every exception slotfsm raises on purpose."""


class FailureError(SlotfsmError):
    """A :class:`Failure` raised as an exception, for callers that prefer them.

    ``failure`` is the value the snapshot carries; ``str()`` is its one line.
    """

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure)
        self.failure = failure

    def __str__(self) -> str:
        return str(self.failure)


class ControllerClosedError(SlotfsmError):
    """The controller stopped (or is stopping) before the command settled."""


class ConfigError(SlotfsmError, ValueError):
    """A configuration value is invalid (raised at construction)."""


class RegistryError(SlotfsmError, ValueError):
    """The model registry is malformed; the message names the entry."""


class UnknownSlotError(SlotfsmError, KeyError):
    """No slot of that name is configured."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown slot"


class ModelInUseError(SlotfsmError):
    """Another slot holds, is loading, or may still hold that model.

    The server keeps one copy of a model, so two slots sharing it would unload
    it under each other.
    """


class UnknownModelError(SlotfsmError, KeyError):
    """No registry entry of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


class LemonadeError(SlotfsmError):
    """Base of the client's errors.

    ``route`` is the method and path, e.g. ``"POST /api/v1/load"``; the
    message starts with it.
    """

    def __init__(self, route: str, detail: str) -> None:
        super().__init__(f"{route}: {detail}")
        self.route = route


class ServerUnreachable(LemonadeError):
    """No response: connection refused, reset or closed before an answer."""


class ServerTimeout(LemonadeError):
    """An httpx timeout (connect, write, pool or read)."""


class ServerParseError(LemonadeError):
    """A 2xx body that is not what the server promises, or one too large."""


class ServerHTTPError(LemonadeError):
    """The server answered with a non-2xx status.

    ``message`` is the server's own message, from ``{"error": {"message": ...}}``
    (``/load``), ``{"error": "..."}`` (``/unload``, 401, 405), or else the first
    200 characters of the body.  ``code`` is the nested object's ``code`` (or
    its ``type`` when it has no code); ``None`` for the plain-string shape.
    """

    def __init__(self, route: str, status: int, message: str, code: str | None = None) -> None:
        detail = f"HTTP {status}: {message}"
        if code is not None:
            detail += f" ({code})"
        super().__init__(route, detail)
        self.status = status
        self.message = message
        self.code = code


class ValidationStopped(SlotfsmError):
    """Raised by :func:`slotfsm.preload.validate_sync` when its ``stop`` event was set."""


class GraphvizMissingError(SlotfsmError, RuntimeError):
    """``slotfsm diagram --format svg`` needs Graphviz's ``dot`` program."""
