"""The fake server's value objects: catalog entries, timings, recorded requests, health faults."""

from __future__ import annotations

import enum
import os
from typing import Any, ClassVar

import attrs

__all__ = [
    "HEALTH_TYPES",
    "MODEL_TYPES",
    "FakeModel",
    "FakeTiming",
    "HealthFault",
    "RecordedRequest",
]

HEALTH_TYPES: tuple[str, ...] = (
    "classification",
    "embedding",
    "image",
    "llm",
    "reranking",
    "transcription",
    "tts",
)
"""The seven model types Lemonade 11.7.0 lists in ``max_models`` and ``pinned_models``."""

MODEL_TYPES: tuple[str, ...] = (*HEALTH_TYPES, "audio-generation", "mesh")
"""Every model ``type`` the fake accepts (the last two are listed only when configured)."""

SOURCES: tuple[str, ...] = ("extra_models_dir", "user", "huggingface")
"""Where a model comes from: a local file, a user-registered model, a built-in."""

_NAME_PREFIX = {"extra_models_dir": "extra.", "user": "user.", "huggingface": ""}


def _default_checkpoint(model: FakeModel) -> str:
    return f"fake-org/{model.name}:Q4_0"


def _default_source(model: FakeModel) -> str:
    return "extra_models_dir" if model.checkpoint.startswith("/") else "huggingface"


def _default_file(model: FakeModel) -> str:
    if model.checkpoint.startswith("/"):
        return model.checkpoint
    repo = model.checkpoint.partition(":")[0]
    return f"{FakeModel.HF_CACHE}/models--{repo.replace('/', '--')}/snapshots/0/{model.name}.gguf"


def _default_labels(model: FakeModel) -> tuple[str, ...]:
    return ("chat", "reasoning") if model.source == "huggingface" else ("custom", "chat")


@attrs.frozen
class FakeModel:
    """One model the fake server knows (its catalog entry).

    ``name`` is the model's public id: the name ``/health`` and ``/api/v1/models``
    list.  ``type`` picks the per-type LRU pool (``max_models``).

    ``checkpoint`` defaults to ``fake-org/NAME:Q4_0`` (a Hugging Face
    checkpoint, as for a built-in model); an absolute path makes the model a
    local file, as Lemonade registers the files of its ``extra_models_dir``.
    ``source`` follows from it (``extra_models_dir`` for a path,
    ``huggingface`` otherwise; ``user`` for a user-registered model) and
    decides the prefixed spelling ``/load`` and ``/unload`` also accept:
    ``extra.NAME``, ``user.NAME``, none for a built-in.  ``model_file`` is the
    file handed to llama-server (the element after ``-m`` in the ``/health``
    row's ``launch_command``): the checkpoint for a local file, a file in
    :attr:`HF_CACHE` otherwise; set it for a sub-folder model, whose
    checkpoint is the folder.

    ``downloaded=False`` hides the model from ``GET /api/v1/models`` unless
    ``?show_all=true``; loading it tries a download, which fails on the
    offline server the fake is (500 "CURL error: Couldn't resolve host
    name", no eviction, as 11.7.0 answers offline).
    ``max_context_window`` is what ``/api/v1/models`` and ``/health`` report
    (``None``: a file whose header cannot be read; the fields are left out);
    ``size`` (GB) is listed when given, as for a built-in not downloaded.
    """

    HF_CACHE: ClassVar[str] = "/root/.cache/huggingface/hub"
    """Where the fake's built-in models' files live."""

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    type: str = attrs.field(default="llm", validator=attrs.validators.in_(MODEL_TYPES))
    checkpoint: str = attrs.field(
        default=attrs.Factory(_default_checkpoint, takes_self=True),
    )
    recipe: str = "llamacpp"
    downloaded: bool = True
    source: str = attrs.field(
        default=attrs.Factory(_default_source, takes_self=True),
        validator=attrs.validators.in_(SOURCES),
    )
    model_file: str = attrs.field(default=attrs.Factory(_default_file, takes_self=True))
    max_context_window: int | None = 512
    labels: tuple[str, ...] = attrs.field(
        default=attrs.Factory(_default_labels, takes_self=True), converter=tuple
    )
    size: float | None = None

    @property
    def spellings(self) -> tuple[str, ...]:
        """The names ``/load``, ``/unload`` and ``/api/v1/models/{name}`` accept for it."""
        prefix = _NAME_PREFIX[self.source]
        return (self.name, prefix + self.name) if prefix else (self.name,)

    @classmethod
    def for_file(cls, name: str, path: str | os.PathLike[str], **fields: Any) -> FakeModel:
        """The model as the server registers a file of its models folder: ``name`` at ``path``.

        Its checkpoint (and the file ``/health`` says it loads) is ``path``, so
        a controller validating that file finds the server agrees.
        """
        return cls(name, checkpoint=os.fspath(path), **fields)


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, not {value!r}")


@attrs.frozen
class FakeTiming:
    """How long the fake's backends take, in seconds of ``anyio.current_time()``.

    ``start`` is a backend start (ready, or failed by itself).  ``unload`` is
    one unload or eviction: stopping a process, including a start that timed
    out.  ``start_timeout`` is how long a start that never becomes ready
    (``FakeLemonade.hanging``) is waited for before it is killed and counted
    as failed (``None``: until the switch is turned off).  While
    ``health_waits`` is true, ``GET /health`` and ``/unload`` wait for the
    evictions in progress (the server's router lock), as on 11.7.0.

    :attr:`INSTANT` (the default) keeps tests and the demo fast.
    :attr:`REAL` is what Lemonade 11.7.0 measured on a 2-core host
    (``../shared/reference/lemonade-api.md``, "Timing"): a start 0.1 s, each
    unload or eviction 2.1 s (0.1 s stop plus a fixed 2 s "waiting for GPU
    driver cleanup"), a start that never becomes ready given up after
    608 s; use it on trio's virtual clock or on a loopback server you are
    willing to wait for.
    """

    INSTANT: ClassVar[FakeTiming]
    REAL: ClassVar[FakeTiming]

    start: float = attrs.field(default=0.0, validator=_non_negative)
    unload: float = attrs.field(default=0.0, validator=_non_negative)
    start_timeout: float | None = attrs.field(default=None, validator=_non_negative)
    health_waits: bool = True


FakeTiming.INSTANT = FakeTiming()
FakeTiming.REAL = FakeTiming(start=0.1, unload=2.1, start_timeout=608.0)


@attrs.frozen
class RecordedRequest:
    """One request the fake received, as it saw it.

    ``path`` is the path as sent (without the query, which is in ``query``);
    ``route`` is its normalised name: ``"load"``, ``"unload"``, ``"health"``,
    ``"models"`` (the list), ``"model"`` (``/models/{name}``),
    ``"system-info"``, ``"chat"``, ``"live"`` or ``"other"`` (whatever the
    method).  ``body`` is the parsed JSON body, or ``None`` when the body is
    empty or not JSON.  ``at`` is ``anyio.current_time()`` when the request
    was received and ``done_at`` when the fake stopped handling it;
    ``status`` is the status it answered, or ``None`` while it is in flight
    or when its handling was cancelled before an answer.  ``authorized`` says
    whether the request carried the configured API key (always true when
    none is configured); the ``Authorization`` header itself is never
    stored.  ``dropped`` says the fake handled the request but closed the
    connection instead of answering (``dropping_replies``,
    ``HealthFault.DROP``); ``status`` is then ``None``.
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
    """A way to make ``GET /health`` misbehave (see ``FakeLemonade.health_fault``)."""

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
    """200 with well-formed JSON larger than the client's default ``/health``
    cap (its ``Content-Length`` says so)."""
    NAME_NOT_STRING = "name_not_string"
    """The true answer plus one more row whose ``model_name`` is the number 42."""
