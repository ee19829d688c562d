"""Per-slot configuration."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

import attrs

from slotfsm._validators import Validator, no_control_characters, not_bool, rule
from slotfsm.errors import ConfigError

__all__ = ["LoadOption", "SlotConfig", "positive_seconds"]

LoadOption: TypeAlias = str | int | float | bool
"""A value sent with ``/load``: Lemonade's options are strings, numbers or flags."""

_SET_BY_SLOTFSM = frozenset({"model_name", "model", "checkpoint"})
_NAMED_OPTIONS = frozenset({"ctx_size", "llamacpp_backend", "llamacpp_args"})


def positive_seconds(name: str, value: object) -> float:
    """``value`` as a finite number of seconds above zero, or a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _owner(config: SlotConfig) -> str:
    return f"slot {config.name!r}"


def _rule(what: str, *checks: Validator) -> Validator:
    return rule(what, *checks, error=ConfigError, owner=_owner)


def _seconds(*, off_allowed: bool) -> Validator:
    """:func:`positive_seconds`; with ``off_allowed``, also ``None`` or 0 (never)."""

    def check(config: SlotConfig, attribute: attrs.Attribute[Any], value: object) -> None:
        if off_allowed and (value is None or (type(value) in (int, float) and value == 0)):
            return
        positive_seconds(f"{_owner(config)}: {attribute.name}", value)

    return check


def _check_option(config: SlotConfig, key: object, option: object) -> None:
    where = f"{_owner(config)}: option {key!r}"
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{_owner(config)}: option names must be non-empty strings")
    if key in _SET_BY_SLOTFSM:
        raise ConfigError(f"{where} is set by slotfsm, not config")
    if key == "recipe":
        raise ConfigError(
            f"{where} is ignored by the server's /load (Lemonade 11.7.0): the model's"
            " registration decides it; record it as ModelEntry(recipe=...)"
        )
    if key in _NAMED_OPTIONS:
        raise ConfigError(f"{_owner(config)}: set {key!r} as SlotConfig({key}=...)")
    if not isinstance(option, str | int | float | bool):
        raise ConfigError(f"{where} must be a string, number or bool, got {type(option).__name__}")
    if isinstance(option, float) and not math.isfinite(option):
        raise ConfigError(f"{where} must be finite, got {option}")


def _check_options(config: SlotConfig, _: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{_owner(config)}: extra_options must be a mapping")
    for key, option in value.items():
        _check_option(config, key, option)


def _freeze(options: Mapping[str, LoadOption] | None) -> Mapping[str, LoadOption]:
    """A read-only copy; anything but a mapping is left for the check."""
    if not isinstance(options, Mapping):
        return MappingProxyType({}) if options is None else options
    return MappingProxyType(dict(options))


_v = attrs.validators
_optional_string = _rule("one string or None", _v.optional(_v.instance_of(str)))


@attrs.frozen
class SlotConfig:
    """One slot: its name, its two timeouts and the options sent with ``/load``.

    ``load_timeout`` bounds a load (ADR-0007 §3: on expiry the slot goes to
    ``error`` with ``LOAD_TIMEOUT`` and the load is never retried).
    ``idle_timeout`` is how long a loaded model may show no use before it is
    unloaded (ADR-0007 §2); ``0`` or ``None`` means never.  Options left at
    ``None`` are never sent to the server.

    Every value is checked here, once, and a bad one raises
    :class:`~slotfsm.errors.ConfigError` naming the slot.  ``extra_options``
    may not set what slotfsm sends itself (``model_name``), what the named
    fields hold, or ``recipe``: ``/load`` ignores a recipe in its body
    (Lemonade 11.7.0), so it is recorded on the model's registry entry
    (``ModelEntry.recipe``) instead.
    """

    name: str = attrs.field(
        validator=[
            _rule(
                "a non-empty string, not only spaces",
                _v.instance_of(str),
                _v.matches_re(r"\S", func=re.search),
            ),
            _rule("free of control characters", no_control_characters),
        ]
    )
    load_timeout: float = attrs.field(default=120.0, validator=_seconds(off_allowed=False))
    idle_timeout: float | None = attrs.field(default=300.0, validator=_seconds(off_allowed=True))
    ctx_size: int | None = attrs.field(
        default=None,
        validator=_rule(
            "a positive int or None", _v.optional([_v.instance_of(int), not_bool, _v.gt(0)])
        ),
    )
    llamacpp_backend: str | None = attrs.field(default=None, validator=_optional_string)
    llamacpp_args: str | None = attrs.field(default=None, validator=_optional_string)
    extra_options: Mapping[str, LoadOption] = attrs.field(
        factory=lambda: MappingProxyType({}),
        converter=_freeze,
        validator=_check_options,
        hash=False,
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
