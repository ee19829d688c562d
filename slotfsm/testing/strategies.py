"""Hypothesis strategies for slotfsm's values, for property tests here and downstream.

Needs Hypothesis, which the ``testing`` extra brings (``pip install 'slotfsm[testing]'``)::

    from hypothesis import given
    from slotfsm.testing.strategies import healths, slot_configs

    @given(slot_configs(), healths(names=["qwen3-0.6b"]))
    def test_something(config, health): ...
"""

from __future__ import annotations

from collections.abc import Sequence

try:
    from hypothesis import strategies as st
except ImportError as exc:
    raise ImportError(
        "slotfsm.testing.strategies needs Hypothesis, which the 'testing' extra installs: "
        "pip install 'slotfsm[testing]'",
        name=exc.name,
    ) from exc

from slotfsm.config import SlotConfig
from slotfsm.lemonade import Health, LoadedModel
from slotfsm.registry import ModelEntry

__all__ = ["healths", "loaded_models", "model_entries", "model_names", "slot_configs"]


def model_names() -> st.SearchStrategy[str]:
    """Plausible Lemonade model names: non-empty, printable, no control characters."""
    return st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True)


def model_entries(names: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[ModelEntry]:
    """Registry entries (their files need not exist)."""
    return st.builds(
        ModelEntry,
        name=names if names is not None else model_names(),
        path=model_names().map(lambda n: f"/models/{n}.gguf"),
        sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
        size=st.integers(0, 1 << 40),
        gguf=st.booleans(),
    )


def slot_configs(names: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[SlotConfig]:
    """Valid slot configurations, idle unload on or off."""
    seconds = st.floats(0.001, 3600, allow_nan=False, allow_infinity=False)
    return st.builds(
        SlotConfig,
        name=names if names is not None else model_names(),
        load_timeout=seconds,
        idle_timeout=st.one_of(st.none(), st.just(0.0), seconds),
        ctx_size=st.one_of(st.none(), st.integers(256, 131072)),
    )


def loaded_models(names: Sequence[str] | None = None) -> st.SearchStrategy[LoadedModel]:
    """One ``/health`` model entry, in the old shape or the newer one (with ``busy``)."""
    return st.builds(
        LoadedModel,
        name=st.sampled_from(list(names)) if names else model_names(),
        type=st.sampled_from(["llm", "embedding", "reranking"]),
        last_use=st.one_of(st.none(), st.integers(0, 1 << 40)),
        busy=st.booleans(),
    )


def healths(names: Sequence[str] | None = None) -> st.SearchStrategy[Health]:
    """``/health`` readings listing any subset of ``names`` (any names when not given)."""
    models = st.lists(loaded_models(names), max_size=len(names) if names else 5)
    return st.builds(
        Health,
        status=st.just("ok"),
        models=models.map(lambda ms: tuple({m.name: m for m in ms}.values())),
    )
