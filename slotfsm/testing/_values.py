"""The fake server's value objects: catalog entries, recorded requests, health faults."""

from __future__ import annotations

import enum
from typing import Any

import attrs

__all__ = ["MODEL_TYPES", "FakeModel", "HealthFault", "RecordedRequest"]

MODEL_TYPES: tuple[str, ...] = (
    "llm",
    "embedding",
    "reranking",
    "transcription",
    "image",
    "tts",
    "audio-generation",
    "classification",
    "mesh",
)
"""Every model ``type`` the fake accepts (the last three exist on newer servers only)."""

DEFAULT_MAX_TYPES: tuple[str, ...] = MODEL_TYPES[:6]
"""The types listed in ``/health``'s ``max_models`` unless more are configured."""


def _default_checkpoint(model: FakeModel) -> str:
    return f"fake-org/{model.name}:Q4_0"


@attrs.frozen
class FakeModel:
    """One model the fake server knows (its catalog entry).

    ``name`` is the Lemonade ``model_name``.  ``type`` picks the per-type LRU
    pool (``max_models``).  ``checkpoint`` defaults to ``fake-org/NAME:Q4_0``.
    ``downloaded=False`` hides the model from ``GET /models`` unless
    ``?show_all=true``; it can still be loaded (the real server downloads it).
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    type: str = attrs.field(default="llm", validator=attrs.validators.in_(MODEL_TYPES))
    checkpoint: str = attrs.field(
        default=attrs.Factory(_default_checkpoint, takes_self=True),
    )
    recipe: str = "llamacpp"
    downloaded: bool = True


@attrs.frozen
class RecordedRequest:
    """One request the fake received, as it saw it.

    ``path`` is the path as sent (without the query, which is in ``query``);
    ``route`` is its normalised name: ``"load"``, ``"unload"``, ``"health"``,
    ``"models"``, ``"live"`` or ``"other"`` (whatever the method).  ``body`` is
    the parsed JSON body, or ``None`` when the body is empty or not JSON.
    ``at`` is ``anyio.current_time()`` when the request was received and
    ``done_at`` when the fake stopped handling it; ``status`` is the status it
    answered, or ``None`` while it is in flight or when the client gave up
    (cancelled) before an answer.  ``authorized`` says whether the request
    carried the configured API key (always true when none is configured);
    the ``Authorization`` header itself is never stored.  ``dropped`` says
    the fake handled the request but closed the connection instead of
    answering (``drop_reply``, ``HealthFault.DROP``); ``status`` is then
    ``None``.
    """

    method: str
    path: str
    route: str
    body: Any
    raw_body: bytes
    at: float
    authorized: bool
    query: str = ""
    status: int | None = None
    done_at: float | None = None
    dropped: bool = False


class HealthFault(enum.Enum):
    """A way to make ``GET /health`` misbehave (see ``FakeLemonade.set_health_fault``)."""

    NOT_JSON = "not_json"
    """200 with an HTML body."""
    WRONG_SHAPE = "wrong_shape"
    """200 with JSON that is not the promised shape (``all_models_loaded`` is a string)."""
    SERVER_ERROR = "server_error"
    """500 ``{"error": "..."}``."""
    HANG = "hang"
    """No answer until the fault is cleared (or the request is cancelled)."""
    DROP = "drop"
    """The connection is closed without an answer (in process, the client gets
    ``httpx.RemoteProtocolError``)."""
    HUGE = "huge"
    """200 with well-formed JSON over 2 MiB (its ``Content-Length`` says so)."""
    NAME_NOT_STRING = "name_not_string"
    """The true answer plus one more model whose ``model_name`` is the number 42."""
