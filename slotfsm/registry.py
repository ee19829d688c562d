"""The model registry: which file on disk backs each Lemonade model name.

A :class:`ModelEntry` is what pre-load validation checks a file against
(ADR-0007 §1); a :class:`Registry` is a read-only set of entries looked up by
name.  Every check on the values happens when an entry is built, so a bad
registry fails when it is loaded, never later when a slot needs the model.

:meth:`Registry.from_file` reads JSON or TOML in these shapes:

* hal0's registry, one table per model: ``[models.<id>]`` where the table key
  is the Lemonade ``model_name`` (the table's ``name`` is a display name and
  is ignored), with ``path``, ``size_bytes`` and ``[models.<id>.metadata]
  sha256``;
* hal0's older array form: ``[[models]]`` tables with an ``id`` (the model
  name; it wins over ``name``) and the same fields.  A file is in this form
  when any of its entries has an ``id``; an entry without a string ``id`` is
  then refused, as hal0 skips it;
* a plain list of ``{name, path, sha256, size}`` objects, at the top level or
  under a ``"models"`` key (in TOML, ``[[models]]`` tables).

In every shape ``sha256`` may sit at the top level or under ``metadata``;
without one the entry is *unverified* (see :attr:`ModelEntry.verified`).
``size`` (or ``size_bytes``) absent or 0 means unknown.  ``gguf`` is the
entry's explicit boolean when given, else whether the path ends in ``.gguf``
(case-insensitive).  ``recipe`` and ``allow_unverified`` are read when given;
every other key (``capabilities``, ``backends``, ``defaults``, ...) is ignored.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import attrs

from slotfsm._validators import Validator, no_control_characters, not_bool, rule, short
from slotfsm.errors import RegistryError, UnknownModelError

__all__ = ["LoadedRegistry", "ModelEntry", "Registry", "SkippedEntry"]

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _path_to_str(value: object) -> object:
    """Turn an ``os.PathLike`` into ``str``; leave anything else for the check."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _unknown_size(value: object) -> object:
    """0 means unknown, stored as None; anything else is left for the check."""
    return None if type(value) is int and value == 0 else value


def _rule(what: str, *checks: Validator) -> Validator:
    return rule(what, *checks, error=RegistryError, owner=lambda e: f"model entry {e.name!r}")


_v = attrs.validators


@attrs.frozen
class ModelEntry:
    """One model the registry knows: its Lemonade name and the file behind it.

    ``name`` is the Lemonade ``model_name`` (non-empty, no control
    characters).  ``path`` is the model file (a ``str`` or any
    ``os.PathLike``, stored as ``str``).  ``sha256`` is 64 hex digits, stored
    in lower case, or None when unknown: such an entry is *unverified* and
    validation refuses it unless unverified entries are allowed, by the
    caller or by this entry's ``allow_unverified`` (ADR-0007 §1).  ``size`` is
    the size in bytes, or None when unknown (0 is taken as unknown and stored
    as None); an unknown size skips the size check.  ``gguf`` says the file
    must start with the GGUF magic; whisper, kokoro and sd-cpp assets are not
    GGUF.  ``recipe`` (e.g. ``"flm"``) records which Lemonade backend the
    server registered the model with; it is informational and never sent,
    because ``/load`` ignores a ``recipe`` in its body (Lemonade 11.7.0).

    Invalid values raise :class:`~slotfsm.errors.RegistryError` naming the
    entry.
    """

    name: str = attrs.field(
        validator=[
            _rule("a non-empty string", _v.instance_of(str), _v.min_len(1)),
            _rule("free of control characters", no_control_characters),
        ]
    )
    path: str = attrs.field(
        converter=_path_to_str,
        validator=[
            _rule("a non-empty string or os.PathLike", _v.instance_of(str), _v.min_len(1)),
            _rule("free of NUL", _v.not_(_v.matches_re("\x00", func=re.search))),
        ],
    )
    sha256: str | None = attrs.field(
        default=None,
        converter=_lower,
        validator=_rule(
            "64 hex digits or None", _v.optional([_v.instance_of(str), _v.matches_re(_SHA256)])
        ),
    )
    size: int | None = attrs.field(
        default=None,
        converter=_unknown_size,
        validator=[
            _rule("an integer number of bytes", _v.optional([_v.instance_of(int), not_bool])),
            _rule(">= 0 (0 means unknown)", _v.optional(_v.ge(0))),
        ],
    )
    gguf: bool = attrs.field(default=True, validator=_rule("true or false", _v.instance_of(bool)))
    recipe: str | None = attrs.field(
        default=None,
        validator=_rule(
            "a non-empty string or None", _v.optional([_v.instance_of(str), _v.min_len(1)])
        ),
    )
    allow_unverified: bool = attrs.field(
        default=False, validator=_rule("true or false", _v.instance_of(bool))
    )

    @property
    def verified(self) -> bool:
        """True when the registry gives a sha256 the file can be checked against."""
        return self.sha256 is not None


@attrs.frozen
class SkippedEntry:
    """An entry :meth:`Registry.from_file` left out in lenient mode, and why.

    ``where`` locates it in the file (``models[2]`` or ``models.<id>``);
    ``name`` is its model name when it has one; ``reason`` says what is wrong.
    """

    where: str
    name: str | None
    reason: str

    def __str__(self) -> str:
        label = f" ({self.name!r})" if self.name else ""
        return f"{self.where}{label}: {self.reason}"


@attrs.frozen
class LoadedRegistry:
    """What ``Registry.from_file(path, strict=False)`` returns.

    ``registry`` holds every sound entry; ``skipped`` the others, in file
    order, each with its reason.
    """

    registry: Registry
    skipped: tuple[SkippedEntry, ...]


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

    @overload
    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, strict: Literal[True] = True
    ) -> Registry: ...

    @overload
    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, strict: Literal[False]
    ) -> LoadedRegistry: ...

    @overload
    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, strict: bool
    ) -> Registry | LoadedRegistry: ...

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, strict: bool = True
    ) -> Registry | LoadedRegistry:
        """Load a registry from hal0's TOML or a plain JSON/TOML list.

        Strict (the default): any problem with an entry (a missing path, a
        sha256 that is not 64 hex digits, a negative size, a duplicate name,
        a value of the wrong type) raises
        :class:`~slotfsm.errors.RegistryError` naming the file and the entry.

        Lenient (``strict=False``): such entries are left out and the result
        is a :class:`LoadedRegistry` listing them with their reasons, so one
        bad drop-in does not cost the whole registry.  A later duplicate of a
        name is the one left out.

        In both modes a file that cannot be read or parsed, or holds no list
        or table of models, raises :class:`~slotfsm.errors.RegistryError`.
        """
        source = os.fspath(path)
        entries: dict[str, ModelEntry] = {}
        first_seen: dict[str, str] = {}
        skipped: list[SkippedEntry] = []
        for item in _read_items(source):
            try:
                entry = _entry_from_item(item)
                if entry.name in entries:
                    raise RegistryError(
                        f"duplicate model name {entry.name!r} (also {first_seen[entry.name]})"
                    )
            except RegistryError as exc:
                label = item.name if isinstance(item.name, str) and item.name else None
                skip = SkippedEntry(item.where, label, str(exc))
                if strict:
                    raise RegistryError(f"{source}: {skip}") from None
                skipped.append(skip)
                continue
            entries[entry.name] = entry
            first_seen[entry.name] = item.where
        registry = cls(entries.values())
        return registry if strict else LoadedRegistry(registry, tuple(skipped))

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


_NO_NAME = object()


class _Item(NamedTuple):
    """One model item of a file, before it becomes an entry."""

    where: str
    """``models[INDEX]`` or ``models.KEY``."""
    field: str
    """Where its model name comes from: the table ``key``, ``id`` or ``name``."""
    name: Any
    """The model name as written (any type, checked by ModelEntry), or ``_NO_NAME``."""
    value: object


def _read_items(source: str) -> list[_Item]:
    """Parse ``source`` and return its model items."""
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise RegistryError(f"{source}: cannot read the registry: {exc.strerror}") from exc
    document = _parse(source, data)
    models = document.get("models") if isinstance(document, dict) else document
    if isinstance(models, dict):
        return [_Item(f"models.{key}", "key", key, item) for key, item in models.items()]
    if not isinstance(models, list):
        raise RegistryError(
            f"{source}: expected a list of models, or a 'models' list or table of tables/objects"
        )
    field = "id" if any(isinstance(item, dict) and "id" in item for item in models) else "name"
    return [
        _Item(
            f"models[{index}]",
            field,
            item.get(field, _NO_NAME) if isinstance(item, dict) else _NO_NAME,
            item,
        )
        for index, item in enumerate(models)
    ]


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


def _entry_from_item(source: _Item) -> ModelEntry:
    """The entry an item describes, or a RegistryError saying what is wrong with it."""
    name, item = source.name, source.value
    if not isinstance(item, dict):
        raise RegistryError(f"expected a table/object, got {short(item)}")
    if name is _NO_NAME:
        hal0 = " (hal0 skips entries without one)" if source.field == "id" else ""
        raise RegistryError(f"missing '{source.field}'{hal0}")
    if "path" not in item:
        raise RegistryError("missing 'path'")
    path = item["path"]
    return ModelEntry(
        name=name,
        path=path,
        sha256=_sha256_of(item),
        size=item.get("size", item.get("size_bytes")),
        gguf=item["gguf"] if "gguf" in item else _looks_gguf(path),
        recipe=item.get("recipe"),
        allow_unverified=item.get("allow_unverified", False),
    )


def _sha256_of(item: Mapping[str, Any]) -> object:
    if "sha256" in item:
        return item["sha256"]
    metadata = item.get("metadata", {})
    if not isinstance(metadata, dict):
        raise RegistryError(f"'metadata' must be a table, got {short(metadata)}")
    return metadata.get("sha256")


def _looks_gguf(path: object) -> bool:
    return isinstance(path, str) and path.lower().endswith(".gguf")
