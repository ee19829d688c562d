"""The fake server's answers, word for word as Lemonade 11.7.0 gives them.

Pure functions from the fake's state to JSON bodies; every text here was
recorded from the real server (``../shared/reference/lemonade-transcripts.json``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence

import attrs

from slotfsm.testing._residency import Loaded
from slotfsm.testing._values import FakeModel

__all__ = [
    "RESERVED_ARGS",
    "Reply",
    "chat_completion",
    "health_row",
    "invalid_json",
    "invalid_request",
    "json_reply",
    "json_type",
    "load_error",
    "model_not_found",
    "model_object",
    "no_such_route",
    "plain_error",
    "reserved_arg",
    "system_info",
]

RESERVED_ARGS: tuple[str, ...] = (
    "--ctx-size",
    "--device",
    "--embedding",
    "--embeddings",
    "--jinja",
    "--metrics",
    "--mmproj",
    "--mmproj-auto",
    "--mmproj-url",
    "--model",
    "--model-draft",
    "--no-jinja",
    "--no-mmproj",
    "--no-mmproj-auto",
    "--port",
    "--rerank",
    "--reranking",
    "--spec-draft-model",
    "-c",
    "-dev",
    "-m",
    "-md",
    "-mm",
    "-mmu",
)
"""llama-server arguments Lemonade manages; ``llamacpp_args`` naming one is refused."""

WEBSOCKET_PORT = 9000
CREATED = 1234567890
FINGERPRINT = "b1-0c1e570"


@attrs.frozen
class Reply:
    """One answer: status, body bytes, content type."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"


def json_reply(status: int, payload: object) -> Reply:
    """An answer with a JSON body."""
    return Reply(status, json.dumps(payload).encode("utf-8"))


def plain_error(status: int, text: str) -> Reply:
    """The plain-string error shape ``{"error": "..."}`` (401, 405, 400 body errors, /unload)."""
    return json_reply(status, {"error": text})


def no_such_route(path: str) -> Reply:
    """404 for a path or method no route serves."""
    error = {"message": "The requested endpoint does not exist", "path": path, "type": "not_found"}
    return json_reply(404, {"error": error})


def json_type(value: object) -> str:
    """The JSON type name of a parsed value, as the server's parser words it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def invalid_json(error: json.JSONDecodeError) -> Reply:
    """400 for a body that is not JSON (the parser's words, in Python's terms)."""
    return plain_error(
        400,
        "Invalid JSON in request body: [json.exception.parse_error.101] parse error at line "
        f"{error.lineno}, column {error.colno}: syntax error while parsing value - {error.msg}",
    )


def invalid_request(detail: str) -> Reply:
    """400 for a request whose ``model_name`` is missing or not a string."""
    error = {
        "code": "invalid_request",
        "message": f"Invalid request: {detail}",
        "type": "invalid_request_error",
    }
    return json_reply(400, {"error": error})


def _model_error(status: int, code: str, name: str, message: str) -> Reply:
    error = {
        "code": code,
        "message": message,
        "param": "model",
        "requested_model": name,
        "type": code,
    }
    return json_reply(status, {"error": error})


def model_not_found(name: str, known: Iterable[str]) -> Reply:
    """404 ``model_not_found`` naming three of the models the server knows."""
    names = sorted(known)
    shown = ", ".join(f"'{n}'" for n in names[:3])
    message = (
        f"Model '{name}' was not found. Available models include: {shown}, and "
        f"{max(len(names) - 3, 0)} more. Use 'lemonade list' or "
        "GET /api/v1/models?show_all=true to see all available models."
    )
    return _model_error(404, "model_not_found", name, message)


def load_error(name: str, detail: str) -> Reply:
    """500 ``model_load_error``."""
    return _model_error(500, "model_load_error", name, f"Failed to load model '{name}': {detail}")


def reserved_arg(args: str) -> str | None:
    """The refusal of ``llamacpp_args`` naming a reserved argument, or ``None``."""
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    for word in words:
        flag = word.partition("=")[0]
        if flag in RESERVED_ARGS:
            return (
                "Invalid custom llama-server arguments:\n"
                f"Argument '{flag}' is managed by Lemonade and cannot be overridden.\n"
                f"Reserved arguments: {', '.join(RESERVED_ARGS)}"
            )
    return None


def _launch_command(entry: Loaded, llama_server: str) -> list[str]:
    options = entry.options
    command = [
        llama_server,
        "-m",
        entry.model.model_file,
        "--ctx-size",
        str(options["ctx_size"]),
        "--port",
        str(entry.port),
        "--jinja",
        "--metrics",
    ]
    args = str(options.get("llamacpp_args") or "")
    return command + (shlex.split(args) if args else [])


def health_row(
    entry: Loaded, last_use: int, busy: bool, *, full: bool, llama_server: str
) -> dict[str, object]:
    """One ``all_models_loaded`` row: every 11.7.0 field, or the 10.6.0 few when not ``full``."""
    model = entry.model
    row: dict[str, object] = {
        "backend_url": f"http://127.0.0.1:{entry.port}/v1",
        "checkpoint": model.checkpoint,
        "device": "cpu",
        "last_use": last_use,
        "model_name": model.name,
        "pid": entry.pid,
        "recipe": model.recipe,
        "recipe_options": dict(entry.options),
        "type": model.type,
    }
    if not full:
        return row
    row.update(
        backend_alive=True,
        backend_health="ready",
        is_busy=busy,
        is_streaming=busy,
        launch_command=_launch_command(entry, llama_server),
        loaded=True,
        pinned=False,
        residency_class="standard",
        slot_pool=f"standard/{model.type}",
        status="in_use" if busy else "ready",
        watchdog_reset=False,
    )
    if model.max_context_window is not None:
        row["max_context_window"] = model.max_context_window
    return dict(sorted(row.items()))


def model_object(model: FakeModel) -> dict[str, object]:
    """One model as ``/api/v1/models`` lists it."""
    obj: dict[str, object] = {
        "checkpoint": model.checkpoint,
        "checkpoints": {"main": model.checkpoint},
        "components": [],
        "created": CREATED,
        "downloaded": model.downloaded,
        "id": model.name,
        "labels": list(model.labels),
        "object": "model",
        "owned_by": "lemonade",
        "recipe": model.recipe,
        "recipe_options": {},
        "registry_source": "huggingface",
        "source": model.source,
        "suggested": True,
        "update_available": False,
    }
    if model.downloaded and model.max_context_window is not None:
        obj["context_length"] = model.max_context_window
        obj["max_context_window"] = model.max_context_window
    if model.size is not None:
        obj["size"] = model.size
    return dict(sorted(obj.items()))


def system_info(backends: Mapping[str, str], default_backend: str) -> dict[str, object]:
    """``/api/v1/system-info``: the llama.cpp backends and their states (no host facts)."""
    listed = {
        name: {"action": "", "devices": ["cpu"], "message": "", "state": state}
        for name, state in sorted(backends.items())
    }
    return {
        "recipes": {"llamacpp": {"backends": listed, "default_backend": default_backend}},
        "unavailable_recipes": [],
    }


def chat_completion(name: str, max_tokens: int, created: int, prompt: Sequence[object]) -> object:
    """A ``chat.completion`` of ``max_tokens`` tokens (the text means nothing)."""
    prompt_tokens = len(json.dumps(prompt)) // 4 + 1
    timings = (
        "cache_n",
        "predicted_ms",
        "predicted_n",
        "predicted_per_second",
        "predicted_per_token_ms",
        "prompt_ms",
        "prompt_n",
        "prompt_per_second",
        "prompt_per_token_ms",
    )
    return {
        "choices": [
            {
                "finish_reason": "length",
                "index": 0,
                "message": {"content": " ok" * max_tokens, "role": "assistant"},
            }
        ],
        "created": created,
        "id": f"chatcmpl-fake{created}",
        "model": name,
        "object": "chat.completion",
        "system_fingerprint": FINGERPRINT,
        "timings": dict.fromkeys(timings, 0),
        "usage": {
            "completion_tokens": max_tokens,
            "prompt_tokens": prompt_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "total_tokens": prompt_tokens + max_tokens,
        },
    }
