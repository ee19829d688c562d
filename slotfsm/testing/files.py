"""Small model files for tests and the demo: sound ones and deliberately broken ones."""

from __future__ import annotations

import enum
import hashlib
import os
import random
import struct
from pathlib import Path

from slotfsm.registry import ModelEntry

__all__ = ["Flaw", "gguf_bytes", "write_model"]


class Flaw(enum.StrEnum):
    """How :func:`write_model` breaks a file (the entry always describes the sound file)."""

    SHA256 = "sha256"
    """One byte flipped after the header: same size, same magic, wrong sha256."""
    TRUNCATED = "truncated"
    """Cut to half its size: the size check catches it."""
    MAGIC = "magic"
    """The first four bytes are not ``GGUF``."""
    MISSING = "missing"
    """No file at all."""


def gguf_bytes(size: int, *, seed: int = 0) -> bytes:
    """``size`` bytes that start with a plausible GGUF header, the rest seeded noise."""
    if size < 24:
        raise ValueError("a GGUF file has at least 24 bytes")
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
    return header + random.Random(seed).randbytes(size - len(header))


def write_model(
    directory: str | os.PathLike[str],
    name: str,
    *,
    size: int = 4096,
    flaw: Flaw | None = None,
    seed: int | None = None,
) -> ModelEntry:
    """Write ``directory/<name>.gguf`` and return the registry entry of the sound file.

    With a ``flaw`` the file on disk is broken that way, so validating it
    against the returned entry fails with the matching ``PreloadError``.
    """
    content = gguf_bytes(size, seed=seed if seed is not None else sum(name.encode()))
    path = Path(directory) / f"{name}.gguf"
    entry = ModelEntry(
        name=name, path=str(path), sha256=hashlib.sha256(content).hexdigest(), size=size
    )
    if flaw is Flaw.SHA256:
        content = content[:-1] + bytes([content[-1] ^ 0xFF])
    elif flaw is Flaw.TRUNCATED:
        content = content[: size // 2]
    elif flaw is Flaw.MAGIC:
        content = b"GGUX" + content[4:]
    if flaw is not Flaw.MISSING:
        path.write_bytes(content)
    return entry
