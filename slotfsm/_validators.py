"""attrs validators that refuse a bad value with one library exception and one sentence.

attrs' own validators raise ``TypeError``/``ValueError`` with messages about
Python types; :func:`rule` wraps a group of them so that a value object
refuses a bad field with its own exception (``RegistryError``,
``ConfigError``) saying ``<owner>: <field> must be <what>, got <value>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeAlias

import attrs

__all__ = ["Validator", "no_control_characters", "not_bool", "rule", "short"]

Validator: TypeAlias = Callable[[Any, "attrs.Attribute[Any]", Any], None]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

not_bool: Validator = attrs.validators.not_(attrs.validators.instance_of(bool))
"""Refuses ``True``/``False`` where a number is meant (``bool`` is an ``int``)."""

no_control_characters: Validator = attrs.validators.not_(
    attrs.validators.matches_re(_CONTROL, func=re.search)
)
"""Refuses a string with a control character (a newline, NUL, DEL...)."""


def short(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rule(
    what: str,
    *checks: Validator,
    error: Callable[[str], Exception],
    owner: Callable[[Any], str],
) -> Validator:
    """A validator that passes when every check passes.

    Otherwise it raises ``error("<owner(instance)>: <field> must be <what>,
    got <value>")``.  Checks run after every field is set, so ``owner`` may
    read the instance's other fields.
    """
    combined = attrs.validators.and_(*checks)

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        try:
            combined(instance, attribute, value)
        except (TypeError, ValueError):
            message = f"{owner(instance)}: {attribute.name} must be {what}, got {short(value)}"
            raise error(message) from None

    return check
