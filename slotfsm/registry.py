"""The model registry: which file on disk backs each Lemonade model name.

A :class:`ModelEntry` is what pre-load validation checks a file against
(ADR-0007 §1); a :class:`Registry` is a read-only set of entries looked up by
name.  Every check on the values happens when an entry is built, so a bad
registry fails when it is loaded, never later when a slot needs the model.

:meth:`Registry.from_file` reads three shapes:

* hal0's registry TOML: ``[[models]]`` tables with ``id``, ``name``,
  ``path``, ``size_bytes`` and ``[models.metadata] sha256`` (other keys such
  as ``capabilities`` and ``backends`` are ignored);
* a plain JSON list of ``{name, path, sha256, size, gguf?}`` objects, either
  at the top level or under a ``"models"`` key;
* the same plain shape in TOML (``[[models]]`` tables).

In every shape, ``gguf`` is the entry's explicit ``gguf`` boolean when given,
and otherwise whether the path ends in ``.gguf`` (case-insensitive).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from slotfsm.errors import RegistryError, UnknownModelError

__all__ = ["ModelEntry", "Registry"]

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _path_to_str(value: object) -> object:
    """Turn an ``os.PathLike`` into ``str``; leave anything else for the check."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


@attrs.frozen
class ModelEntry:
    """One model the registry knows: its Lemonade name and the file behind it.

    ``name`` is the Lemonade ``model_name`` (non-empty, no control
    characters).  ``path`` is the model file (a ``str`` or any
    ``os.PathLike``, stored as ``str``).  ``sha256`` is 64 hex digits, stored
    in lower case.  ``size`` is the size in bytes; **0 means unknown** and
    skips the size check (the sha256 still has to match).  ``gguf`` says the
    file must start with the GGUF magic; whisper, kokoro and sd-cpp assets
    are not GGUF.

    Invalid values raise :class:`~slotfsm.errors.RegistryError` naming the
    entry.
    """

    name: str
    path: str = attrs.field(converter=_path_to_str)
    sha256: str = attrs.field(converter=_lower)
    size: int
    gguf: bool = True

    def __attrs_post_init__(self) -> None:
        problem = _entry_problem(self)
        if problem is not None:
            raise RegistryError(f"model entry {self.name!r}: {problem}")


def _entry_problem(entry: ModelEntry) -> str | None:
    """What is wrong with ``entry``, or None."""
    name: object = entry.name
    path: object = entry.path
    sha256: object = entry.sha256
    size: object = entry.size
    gguf: object = entry.gguf
    if not isinstance(name, str) or not name:
        return f"name must be a non-empty string, got {name!r}"
    if _CONTROL.search(name):
        return "name must not contain control characters"
    if not isinstance(path, str) or not path:
        return f"path must be a non-empty string or os.PathLike, got {path!r}"
    if "\x00" in path:
        return "path must not contain NUL"
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        return f"sha256 must be 64 hex digits, got {_short(sha256)}"
    if isinstance(size, bool) or not isinstance(size, int):
        return f"size must be an integer number of bytes, got {size!r}"
    if size < 0:
        return f"size must be >= 0 (0 means unknown), got {size}"
    if not isinstance(gguf, bool):
        return f"gguf must be true or false, got {gguf!r}"
    return None


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Registry:
    """A read-only set of :class:`ModelEntry`, looked up by model name.

    ``registry[name]`` raises :class:`~slotfsm.errors.UnknownModelError` for
    a name it does not hold; ``name in registry`` and :meth:`get` do not
    raise.  Iterating yields the entries in the order they were given.
    """

    def __init__(self, entries: Iterable[ModelEntry] = ()) -> None:
        by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            if not isinstance(entry, ModelEntry):
                raise RegistryError(f"registry entries must be ModelEntry, got {entry!r}")
            if entry.name in by_name:
                raise RegistryError(f"duplicate model name {entry.name!r} in the registry")
            by_name[entry.name] = entry
        self._by_name = by_name

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Registry:
        """Load a registry from hal0's TOML or a plain JSON/TOML list.

        Any problem (an unreadable or unparsable file, a missing path, a
        sha256 that is not 64 hex digits, a negative size, a duplicate name,
        a value of the wrong type) raises
        :class:`~slotfsm.errors.RegistryError` naming the file and the entry
        (its index and name).
        """
        source = os.fspath(path)
        items = _read_items(source)
        entries: list[ModelEntry] = []
        first_index: dict[str, int] = {}
        for index, item in enumerate(items):
            entry = _entry_from_item(source, index, item)
            if entry.name in first_index:
                raise RegistryError(
                    f"{_where(source, index, item)}: duplicate model name {entry.name!r}"
                    f" (also models[{first_index[entry.name]}])"
                )
            first_index[entry.name] = index
            entries.append(entry)
        return cls(entries)

    def __getitem__(self, name: str) -> ModelEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownModelError(self._unknown_message(name)) from None

    def get(self, name: str, default: ModelEntry | None = None) -> ModelEntry | None:
        """The entry called ``name``, or ``default``."""
        return self._by_name.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> list[str]:
        """The model names, in registry order."""
        return list(self._by_name)

    def __repr__(self) -> str:
        return f"Registry({len(self)} models)"

    def _unknown_message(self, name: str) -> str:
        if not self._by_name:
            return f"no model named {name!r}: the registry is empty"
        known = ", ".join(repr(n) for n in sorted(self._by_name)[:10])
        more = "" if len(self._by_name) <= 10 else f" and {len(self._by_name) - 10} more"
        return f"no model named {name!r} in the registry (known: {known}{more})"


def _read_items(source: str) -> list[object]:
    """Parse ``source`` and return its list of model items."""
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise RegistryError(f"{source}: cannot read the registry: {exc.strerror}") from exc
    document = _parse(source, data)
    items = document.get("models") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise RegistryError(
            f"{source}: expected a list of models, or a 'models' list of tables/objects"
        )
    return items


def _parse(source: str, data: bytes) -> object:
    """Parse JSON or TOML, chosen by the suffix (unknown suffix: try both)."""
    suffix = Path(source).suffix.lower()
    parsers = {".json": [_parse_json], ".toml": [_parse_toml]}.get(
        suffix, [_parse_json, _parse_toml]
    )
    problems = []
    for parser in parsers:
        try:
            return parser(data)
        except ValueError as exc:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
            problems.append(str(exc))
    raise RegistryError(f"{source}: cannot parse the registry: {'; '.join(problems)}")


def _parse_json(data: bytes) -> object:
    return json.loads(data.decode("utf-8"))


def _parse_toml(data: bytes) -> object:
    import tomllib  # here, not at the top: only a TOML registry needs it

    return tomllib.loads(data.decode("utf-8"))


def _entry_from_item(source: str, index: int, item: object) -> ModelEntry:
    """Build the entry of ``models[index]``, or raise a RegistryError naming it."""
    where = _where(source, index, item)
    if not isinstance(item, dict):
        raise RegistryError(f"{where}: expected a table/object, got {_short(item)}")
    try:
        fields = _fields_of(item)
        return ModelEntry(**fields)
    except RegistryError as exc:
        raise RegistryError(f"{where}: {exc}") from None


def _where(source: str, index: int, item: object) -> str:
    """``FILE: models[INDEX] ('NAME')``, the name (or id) when there is one."""
    where = f"{source}: models[{index}]"
    label = (item.get("name") or item.get("id")) if isinstance(item, dict) else None
    return f"{where} ({label!r})" if isinstance(label, str) and label else where


def _fields_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """Map one item (hal0 or plain shape) to ModelEntry's fields."""
    name = item.get("name") or item.get("id")
    if name is None:
        raise RegistryError("missing 'name' (or 'id')")
    if "path" not in item:
        raise RegistryError("missing 'path'")
    path = item["path"]
    return {
        "name": name,
        "path": path,
        "sha256": _sha256_of(item),
        "size": _size_of(item),
        "gguf": item["gguf"] if "gguf" in item else _looks_gguf(path),
    }


def _sha256_of(item: Mapping[str, Any]) -> object:
    if "sha256" in item:
        return item["sha256"]
    metadata = item.get("metadata")
    if metadata is None:
        raise RegistryError("missing 'sha256' (or 'metadata.sha256')")
    if not isinstance(metadata, dict):
        raise RegistryError(f"'metadata' must be a table, got {_short(metadata)}")
    if "sha256" not in metadata:
        raise RegistryError("missing 'metadata.sha256'")
    return metadata["sha256"]


def _size_of(item: Mapping[str, Any]) -> object:
    for key in ("size", "size_bytes"):
        if key in item:
            return item[key]
    raise RegistryError("missing 'size' (or 'size_bytes'; 0 means unknown)")


def _looks_gguf(path: object) -> bool:
    return isinstance(path, str) and path.lower().endswith(".gguf")
