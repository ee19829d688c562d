"""SlotConfig refuses bad values when it is built, never later at load time."""

from __future__ import annotations

import math
from typing import Any

import pytest

from slotfsm import ConfigError, SlotConfig


@pytest.mark.parametrize(
    ("options", "fact"),
    [
        ({"name": ""}, "non-empty"),
        ({"name": "  "}, "not only spaces"),
        ({"name": 5}, "name must be a non-empty string"),
        ({"name": "a\nb"}, "control characters"),
        ({"name": "s", "load_timeout": 0}, "slot 's': load_timeout must be finite and > 0, got 0"),
        ({"name": "s", "load_timeout": None}, "load_timeout must be a number of seconds"),
        ({"name": "s", "load_timeout": -1.0}, "load_timeout"),
        ({"name": "s", "load_timeout": math.nan}, "finite"),
        ({"name": "s", "load_timeout": math.inf}, "finite"),
        ({"name": "s", "load_timeout": True}, "number of seconds"),
        ({"name": "s", "idle_timeout": -5}, "idle_timeout"),
        ({"name": "s", "idle_timeout": False}, "idle_timeout must be a number of seconds"),
        ({"name": "s", "ctx_size": 0}, "ctx_size must be a positive int or None, got 0"),
        ({"name": "s", "ctx_size": "4096"}, "ctx_size"),
        ({"name": "s", "ctx_size": True}, "ctx_size"),
        ({"name": "s", "llamacpp_args": ["--parallel", "1"]}, "llamacpp_args must be one string"),
        ({"name": "s", "llamacpp_backend": 1}, "llamacpp_backend must be one string"),
        ({"name": "s", "extra_options": {"model_name": "x"}}, "set by slotfsm"),
        ({"name": "s", "extra_options": {"checkpoint": "x"}}, "set by slotfsm"),
        ({"name": "s", "extra_options": {"recipe": "flm"}}, "ModelEntry(recipe=...)"),
        ({"name": "s", "extra_options": 5}, "extra_options must be a mapping"),
        ({"name": "s", "extra_options": {"ctx_size": 5}}, "SlotConfig(ctx_size=...)"),
        ({"name": "s", "extra_options": {"temp": math.nan}}, "finite"),
        ({"name": "s", "extra_options": {"flags": ["a"]}}, "string, number or bool"),
        ({"name": "s", "extra_options": {"": 1}}, "non-empty"),
    ],
)
def test_bad_values_are_refused_with_the_fact(options: dict[str, Any], fact: str) -> None:
    with pytest.raises(ConfigError) as info:
        SlotConfig(**options)
    assert fact in str(info.value)


@pytest.mark.parametrize("off", [None, 0, 0.0])
def test_idle_timeout_off(off: float | None) -> None:
    assert SlotConfig("s", idle_timeout=off).idle_timeout == off


def test_load_options_leave_out_what_is_unset() -> None:
    config = SlotConfig("s", ctx_size=8192, llamacpp_args="--parallel 1", extra_options={"x": 1})
    assert config.load_options == {"ctx_size": 8192, "llamacpp_args": "--parallel 1", "x": 1}
    assert SlotConfig("s").load_options == {}
    assert SlotConfig("s", idle_timeout=None).idle_timeout is None
    with pytest.raises(TypeError):
        config.extra_options["y"] = 2  # type: ignore[index]
