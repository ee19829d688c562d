"""slotfsm: model-slot lifecycle for Lemonade Server as guarded state machines.

Each slot is an explicit finite-state machine run by its own actor task.  A
model is validated on disk before the server hears of it, a load has a hard
per-slot timeout and is never retried, and idle models are unloaded on a
policy of your choosing.  Start with :class:`Controller`.

The names below are imported on first use, so ``import slotfsm`` (and the
command line) stays cheap until a controller or a client is needed: this
module imports nothing beyond what the interpreter has already loaded.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from typing import Any

    from slotfsm.config import SlotConfig
    from slotfsm.controller import Controller
    from slotfsm.errors import (
        ConfigError,
        ControllerClosedError,
        Failure,
        FailureError,
        ModelInUseError,
        PreloadError,
        RegistryError,
        SlotfsmError,
        UnknownModelError,
        UnknownSlotError,
    )
    from slotfsm.lemonade import (
        Health,
        LemonadeClient,
        LemonadeError,
        LoadedModel,
        ServerHTTPError,
        ServerParseError,
        ServerTimeout,
        ServerUnreachable,
    )
    from slotfsm.preload import (
        FingerprintCache,
        HashPolicy,
        ValidationStopped,
        validate,
        validate_sync,
    )
    from slotfsm.registry import LoadedRegistry, ModelEntry, Registry, SkippedEntry
    from slotfsm.snapshot import Gap, SlotSnapshot, SlotTransition
    from slotfsm.states import SlotState
    from slotfsm.stream import TransitionStream

__version__ = "0.1.0"
"""The release, and the one place it is written (the build reads it from here)."""

_HOMES = {
    "slotfsm.config": ["SlotConfig"],
    "slotfsm.controller": ["Controller"],
    "slotfsm.errors": [
        "FailureError",
        "ConfigError",
        "ControllerClosedError",
        "Failure",
        "ModelInUseError",
        "PreloadError",
        "RegistryError",
        "SlotfsmError",
        "UnknownModelError",
        "UnknownSlotError",
    ],
    "slotfsm.lemonade": [
        "Health",
        "LemonadeClient",
        "LemonadeError",
        "LoadedModel",
        "ServerHTTPError",
        "ServerParseError",
        "ServerTimeout",
        "ServerUnreachable",
    ],
    "slotfsm.preload": [
        "FingerprintCache",
        "HashPolicy",
        "ValidationStopped",
        "validate",
        "validate_sync",
    ],
    "slotfsm.registry": ["LoadedRegistry", "ModelEntry", "Registry", "SkippedEntry"],
    "slotfsm.states": ["SlotState"],
    "slotfsm.snapshot": ["Gap", "SlotSnapshot", "SlotTransition"],
    "slotfsm.stream": ["TransitionStream"],
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ConfigError",
    "Controller",
    "ControllerClosedError",
    "Failure",
    "FailureError",
    "FingerprintCache",
    "Gap",
    "HashPolicy",
    "Health",
    "LemonadeClient",
    "LemonadeError",
    "LoadedModel",
    "LoadedRegistry",
    "ModelEntry",
    "ModelInUseError",
    "PreloadError",
    "Registry",
    "RegistryError",
    "ServerHTTPError",
    "ServerParseError",
    "ServerTimeout",
    "ServerUnreachable",
    "SkippedEntry",
    "SlotConfig",
    "SlotSnapshot",
    "SlotState",
    "SlotTransition",
    "SlotfsmError",
    "TransitionStream",
    "UnknownModelError",
    "UnknownSlotError",
    "ValidationStopped",
    "validate",
    "validate_sync",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'slotfsm' has no attribute {name!r}")
    _quiet_logger()
    __import__(module)
    value = getattr(sys.modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


def _quiet_logger() -> None:
    """A library logs but never decides where logs go: silence the last-resort handler.

    Done when the first public name is resolved rather than at import, so that
    ``import slotfsm`` (and with it the command line) does not import logging.
    """
    import logging

    logger = logging.getLogger("slotfsm")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
