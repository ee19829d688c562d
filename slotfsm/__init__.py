"""slotfsm: model-slot lifecycle for Lemonade Server as guarded state machines.

Each slot is an explicit finite-state machine run by its own actor task.  A
model is validated on disk before the server hears of it, a load has a hard
per-slot timeout and is never retried, and idle models are unloaded on a
policy of your choosing.  Start with :class:`Controller`.
"""

import logging as _logging

from slotfsm.actor import ControllerClosedError
from slotfsm.config import SlotConfig
from slotfsm.controller import Controller
from slotfsm.errors import (
    ConfigError,
    Failure,
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
from slotfsm.registry import ModelEntry, Registry
from slotfsm.rules import SlotState
from slotfsm.snapshot import SlotSnapshot, SlotTransition
from slotfsm.stream import TransitionStream

__version__ = "0.1.0"

# A library logs but never decides where logs go: silence the last-resort handler.
_logging.getLogger("slotfsm").addHandler(_logging.NullHandler())

__all__ = [
    "ConfigError",
    "Controller",
    "ControllerClosedError",
    "Failure",
    "FingerprintCache",
    "HashPolicy",
    "Health",
    "LemonadeClient",
    "LemonadeError",
    "LoadedModel",
    "ModelEntry",
    "PreloadError",
    "Registry",
    "RegistryError",
    "ServerHTTPError",
    "ServerParseError",
    "ServerTimeout",
    "ServerUnreachable",
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
