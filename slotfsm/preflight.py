"""Before ``/load``: will the server load the file we validated, with options it takes?

Validation (:mod:`slotfsm.preload`) proves a file sound.  Two more things can
make a load go wrong on a Lemonade 11.7.0, and both can be known before
anything is sent:

* **The server maps the name to its own file.**  ``GET /api/v1/models/{name}``
  answers its ``checkpoint``: for a top-level ``<models>/X.gguf`` the file
  itself, for a sub-folder model the folder (the server loads its first
  non-``mmproj`` ``.gguf`` in name order), for a built-in a hub reference
  (``org/repo:QUANT``) that names no local file.  A registry path that is not
  the file the server will load is refused with ``CHECKPOINT_MISMATCH``; where
  the server cannot tell, the snapshot says so (``checkpoint_confirmed`` is
  ``None``) and nothing is guessed.
* **Option values the server rejects with an evict-all** (ADR-0007, Context):
  a ``llamacpp_backend`` that is neither ``auto`` nor a backend whose state in
  ``GET /api/v1/system-info`` is not ``unsupported``, and ``llamacpp_args`` naming an
  argument the server manages itself.  They are refused with
  ``OPTION_REFUSED`` before anything is sent.

The functions here are pure; the controller does the asking.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from slotfsm.errors import Failure, PreloadError

__all__ = ["RESERVED_ARGS", "check_args", "check_backend", "file_for_checkpoint", "same_file"]

RESERVED_ARGS = frozenset(
    {
        *("--ctx-size", "--device", "--embedding", "--embeddings", "--jinja", "--metrics"),
        *("--mmproj", "--mmproj-auto", "--mmproj-url", "--model", "--model-draft"),
        *("--no-jinja", "--no-mmproj", "--no-mmproj-auto", "--port", "--rerank"),
        *("--reranking", "--spec-draft-model", "-c", "-dev", "-m", "-md", "-mm", "-mmu"),
    }
)
"""Arguments Lemonade 11.7.0 manages itself ("Reserved arguments: …" in its answer)."""


def check_args(model: str, options: Mapping[str, object]) -> Failure | None:
    """Refuse ``llamacpp_args`` that name an argument the server reserves."""
    args = options.get("llamacpp_args")
    if not isinstance(args, str) or not args.strip():
        return None
    try:
        words = shlex.split(args)
    except ValueError as exc:
        return _refused(model, f"llamacpp_args {args!r} cannot be split into arguments: {exc}")
    for word in words:
        flag = word.split("=", 1)[0]
        if flag in RESERVED_ARGS:
            return _refused(
                model,
                f"llamacpp_args names {flag!r}, which Lemonade manages itself; the server would"
                " answer with an evict-all of every loaded model",
            )
    return None


def check_backend(
    model: str, options: Mapping[str, object], backends: Mapping[str, str] | None
) -> Failure | None:
    """Refuse a ``llamacpp_backend`` the server reports as not usable.

    ``backends`` maps each backend to its state from ``/api/v1/system-info``;
    ``None`` when the server could not tell (then nothing is refused here).
    """
    backend = options.get("llamacpp_backend")
    if not isinstance(backend, str) or backend == "auto" or backends is None:
        return None
    state = backends.get(backend)
    if state is not None and state != "unsupported":  # the rule of 11.7.0
        return None
    usable = ", ".join(["auto", *sorted(b for b, s in backends.items() if s != "unsupported")])
    found = f"state {state!r}" if state is not None else "not a backend this server knows"
    return _refused(
        model,
        f"llamacpp_backend {backend!r} is {found}; the server accepts {usable} and would"
        " answer anything else with an evict-all of every loaded model",
    )


def file_for_checkpoint(checkpoint: str | None) -> Path | None:
    """The local file the server loads for ``checkpoint``, or ``None`` when it names none.

    A file is itself; a folder gives its first non-``mmproj`` ``.gguf`` in
    name order (as the server picks it); a hub reference names no file.
    """
    if not checkpoint or not os.path.isabs(checkpoint):
        return None
    path = Path(checkpoint)
    if path.is_dir():
        candidates = sorted(
            p for p in path.iterdir() if p.suffix == ".gguf" and "mmproj" not in p.name.lower()
        )
        return candidates[0] if candidates else None
    return path


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when both paths name one file: the same path after links, or the same inode.

    A path compared with itself is the same file even when it is missing (a
    file deleted since validation is the accepted race of ADR-0007 §1, not a
    mismatch).
    """
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _refused(model: str, message: str) -> Failure:
    return Failure(
        PreloadError.OPTION_REFUSED, f"loading {model!r} refused: {message}", model=model
    )
