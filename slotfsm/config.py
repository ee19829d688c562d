"""Per-slot configuration."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

import attrs

from slotfsm.errors import ConfigError

__all__ = ["LoadOption", "SlotConfig", "positive_seconds"]

LoadOption: TypeAlias = str | int | float | bool
"""A value sent with ``/load``: Lemonade's options are strings, numbers or flags."""

_RESERVED_OPTIONS = frozenset({"model_name", "model", "recipe", "checkpoint"})
_NAMED_OPTIONS = frozenset({"ctx_size", "llamacpp_backend", "llamacpp_args"})


def _check_name(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"slot name must be a non-empty string, got {value!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"slot name {value!r} contains control characters")


def positive_seconds(name: str, value: object) -> float:
    """``value`` as a finite number of seconds above zero, or a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _check_seconds(allow_off: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: SlotConfig, attribute: attrs.Attribute[Any], value: object) -> None:
        name = f"slot {inst.name!r}: {attribute.name}"
        if value is None and allow_off:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
        if math.isnan(value) or math.isinf(value) or value < 0:
            raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
        if value == 0 and not allow_off:
            raise ConfigError(f"{name} must be > 0, got {value!r}")

    return check


def _check_options(inst: SlotConfig, _: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"slot {inst.name!r}: extra_options must be a mapping")
    for key, option in value.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"slot {inst.name!r}: option names must be non-empty strings")
        if key in _RESERVED_OPTIONS:
            raise ConfigError(f"slot {inst.name!r}: option {key!r} is set by slotfsm, not config")
        if key in _NAMED_OPTIONS:
            raise ConfigError(f"slot {inst.name!r}: set {key!r} as SlotConfig({key}=...)")
        if not isinstance(option, str | int | float | bool):
            raise ConfigError(
                f"slot {inst.name!r}: option {key!r} must be a string, number or bool,"
                f" got {type(option).__name__}"
            )
        if isinstance(option, float) and not math.isfinite(option):
            raise ConfigError(f"slot {inst.name!r}: option {key!r} must be finite, got {option}")


def _freeze(options: Mapping[str, LoadOption] | None) -> Mapping[str, LoadOption]:
    return MappingProxyType(dict(options or {}))


@attrs.frozen
class SlotConfig:
    """One slot: its name, its two timeouts and the options sent with ``/load``.

    ``load_timeout`` bounds a load (ADR-0007 §3: on expiry the slot goes to
    ``error`` with ``LOAD_TIMEOUT`` and the load is never retried).
    ``idle_timeout`` is how long a loaded model may show no use before it is
    unloaded (ADR-0007 §2); ``0`` or ``None`` means never.  Options left at
    ``None`` are never sent to the server.
    """

    name: str = attrs.field(validator=_check_name)
    load_timeout: float = attrs.field(default=120.0, validator=_check_seconds(False))
    idle_timeout: float | None = attrs.field(default=300.0, validator=_check_seconds(True))
    ctx_size: int | None = attrs.field(default=None)
    llamacpp_backend: str | None = None
    llamacpp_args: str | None = None
    extra_options: Mapping[str, LoadOption] = attrs.field(
        factory=lambda: MappingProxyType({}),
        converter=_freeze,
        validator=_check_options,
        hash=False,
    )

    def __attrs_post_init__(self) -> None:
        if self.ctx_size is not None and (
            isinstance(self.ctx_size, bool)
            or not isinstance(self.ctx_size, int)
            or self.ctx_size <= 0
        ):
            raise ConfigError(f"slot {self.name!r}: ctx_size must be a positive int")
        for field in ("llamacpp_backend", "llamacpp_args"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                raise ConfigError(
                    f"slot {self.name!r}: {field} must be one string, got {type(value).__name__}"
                )

    @property
    def load_options(self) -> dict[str, LoadOption]:
        """The options sent with ``/load``, without the ones left at ``None``."""
        options: dict[str, LoadOption] = {}
        if self.ctx_size is not None:
            options["ctx_size"] = self.ctx_size
        if self.llamacpp_backend is not None:
            options["llamacpp_backend"] = self.llamacpp_backend
        if self.llamacpp_args is not None:
            options["llamacpp_args"] = self.llamacpp_args
        options.update(self.extra_options)
        return options
