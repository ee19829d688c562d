"""ModelEntry's checks and Registry loading (hal0's two shapes, plain JSON/TOML, lenient mode)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from slotfsm.errors import RegistryError, UnknownModelError
from slotfsm.registry import LoadedRegistry, ModelEntry, Registry, SkippedEntry

SHA = "ab" * 32


def entry(**changes: object) -> ModelEntry:
    fields: dict[str, object] = {
        "name": "qwen3-0.6b",
        "path": "/models/qwen3-0.6b.gguf",
        "sha256": SHA,
        "size": 1234,
    }
    fields.update(changes)
    return ModelEntry(**fields)  # type: ignore[arg-type]


# -- ModelEntry ---------------------------------------------------------------


def test_entry_normalises_path_and_sha256() -> None:
    e = entry(path=Path("/models/x.gguf"), sha256="AB" * 32)
    assert e.path == "/models/x.gguf"
    assert isinstance(e.path, str)
    assert e.sha256 == "ab" * 32
    assert e.gguf is True


def test_entry_is_frozen() -> None:
    e = entry()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        e.size = 1  # type: ignore[misc]


def test_size_zero_or_none_means_unknown() -> None:
    assert entry(size=0).size is None
    assert entry(size=None).size is None
    assert ModelEntry(name="m", path="/m").size is None


def test_an_entry_without_sha256_is_unverified() -> None:
    assert entry().verified
    unverified = ModelEntry(name="m", path="/m/x.gguf")
    assert (unverified.sha256, unverified.verified, unverified.allow_unverified) == (
        None,
        False,
        False,
    )
    assert entry(sha256=None, allow_unverified=True).allow_unverified


@pytest.mark.parametrize(
    ("changes", "fact"),
    [
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": "a\nb"}, "control characters"),
        ({"name": 7}, "name must be a non-empty string"),
        ({"path": ""}, "path must be a non-empty string"),
        ({"path": None}, "path must be a non-empty string"),
        ({"path": b"/m/x"}, "path must be a non-empty string"),
        ({"path": "/m/a\x00b"}, "path must be free of NUL"),
        ({"sha256": "abc"}, "sha256 must be 64 hex digits or None, got 'abc'"),
        ({"sha256": ""}, "sha256 must be 64 hex digits"),
        ({"sha256": "g" * 64}, "sha256 must be 64 hex digits"),
        ({"sha256": "a" * 65}, "sha256 must be 64 hex digits"),
        ({"sha256": 5}, "sha256 must be 64 hex digits"),
        ({"size": -1}, "size must be >= 0"),
        ({"size": 1.5}, "size must be an integer"),
        ({"size": True}, "size must be an integer"),
        ({"size": "10"}, "size must be an integer"),
        ({"gguf": "yes"}, "gguf must be true or false"),
        ({"recipe": ""}, "recipe must be a non-empty string or None"),
        ({"recipe": 3}, "recipe must be a non-empty string or None"),
        ({"allow_unverified": 1}, "allow_unverified must be true or false"),
    ],
)
def test_entry_rejects_bad_values_naming_the_entry(changes: dict[str, object], fact: str) -> None:
    with pytest.raises(RegistryError) as info:
        entry(**changes)
    assert fact in str(info.value)
    name = changes.get("name", "qwen3-0.6b")
    assert f"model entry {name!r}" in str(info.value)


# -- Registry -----------------------------------------------------------------


def test_registry_lookup() -> None:
    a, b = entry(name="a"), entry(name="b")
    reg = Registry([a, b])
    assert reg["a"] is a
    assert reg.get("b") is b
    assert reg.get("c") is None
    assert "a" in reg
    assert "c" not in reg
    assert list(reg) == [a, b]
    assert len(reg) == 2
    assert reg.names == ["a", "b"]


def test_registry_unknown_name_is_a_clear_error() -> None:
    reg = Registry([entry(name="a"), entry(name="b")])
    with pytest.raises(UnknownModelError) as info:
        reg["nope"]
    message = str(info.value)
    assert "'nope'" in message
    assert "'a', 'b'" in message
    assert SHA not in message
    assert "/models" not in message
    assert isinstance(info.value, KeyError)


def test_empty_registry_unknown_name() -> None:
    with pytest.raises(UnknownModelError, match="registry is empty"):
        Registry()["x"]


def test_registry_rejects_duplicate_names() -> None:
    with pytest.raises(RegistryError, match="duplicate model name 'a'"):
        Registry([entry(name="a"), entry(name="a", path="/other")])


# -- from_file ----------------------------------------------------------------

HAL0_TOML = f"""
[[models]]
id = "qwen3-0.6b"
name = "Qwen3-0.6B-GGUF"
path = "/models/qwen3-0.6b-q4_0.GGUF"
size_bytes = 1234
capabilities = ["chat"]
backends = ["vulkan"]
[models.metadata]
sha256 = "{SHA.upper()}"
source = "hf"

[[models]]
id = "whisper-base"
path = "/models/whisper-base.bin"
size_bytes = 0
[models.metadata]
sha256 = "{"cd" * 32}"

[[models]]
id = "odd"
name = "odd"
path = "/models/odd.bin"
size_bytes = 5
gguf = true
[models.metadata]
sha256 = "{"ef" * 32}"
"""


def test_from_file_reads_hal0_array_form_where_id_wins_over_name(tmp_path: Path) -> None:
    file = tmp_path / "registry.toml"
    file.write_text(HAL0_TOML)
    reg = Registry.from_file(file)
    assert reg.names == ["qwen3-0.6b", "whisper-base", "odd"]
    qwen = reg["qwen3-0.6b"]
    assert qwen == ModelEntry(
        name="qwen3-0.6b",
        path="/models/qwen3-0.6b-q4_0.GGUF",
        sha256=SHA,
        size=1234,
        gguf=True,
    )
    whisper = reg["whisper-base"]
    assert whisper.gguf is False
    assert whisper.size is None
    assert reg["odd"].gguf is True


def test_from_file_reads_plain_json_list_and_object(tmp_path: Path) -> None:
    items = [
        {"name": "a", "path": "/m/a.gguf", "sha256": SHA, "size": 10},
        {"name": "b", "path": "/m/b.onnx", "sha256": SHA, "size": 0, "gguf": False},
    ]
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(items))
    as_object = tmp_path / "object.json"
    as_object.write_text(json.dumps({"models": items}))
    for file in (as_list, as_object):
        reg = Registry.from_file(str(file))
        assert reg.names == ["a", "b"]
        assert reg["a"].gguf is True
        assert reg["b"].gguf is False
        assert reg["a"].size == 10


def test_from_file_reads_plain_toml(tmp_path: Path) -> None:
    file = tmp_path / "plain.toml"
    file.write_text(
        f'[[models]]\nname = "a"\npath = "/m/a.gguf"\nsha256 = "{SHA}"\nsize = 3\n'
        f'[[models]]\nname = "b"\npath = "/m/b.bin"\nsha256 = "{SHA}"\nsize = 4\n'
    )
    reg = Registry.from_file(file)
    assert [(e.name, e.size, e.gguf) for e in reg] == [("a", 3, True), ("b", 4, False)]


def test_from_file_unknown_suffix_tries_json_then_toml(tmp_path: Path) -> None:
    file = tmp_path / "registry"
    file.write_text(f'[[models]]\nname = "a"\npath = "/m/a.gguf"\nsha256 = "{SHA}"\nsize = 3\n')
    assert Registry.from_file(file).names == ["a"]


def write_json(tmp_path: Path, items: object) -> Path:
    file = tmp_path / "registry.json"
    file.write_text(json.dumps(items))
    return file


GOOD = {"name": "good", "path": "/m/good.gguf", "sha256": SHA, "size": 1}


@pytest.mark.parametrize(
    ("item", "facts"),
    [
        ({"name": "m", "sha256": SHA, "size": 1}, ["models[1] ('m')", "missing 'path'"]),
        ({"path": "/m/x", "sha256": SHA, "size": 1}, ["models[1]", "missing 'name'"]),
        (
            {"name": "m", "path": "/m/x", "sha256": "xyz", "size": 1},
            ["models[1] ('m')", "sha256 must be 64 hex digits"],
        ),
        (
            {"name": "m", "path": "/m/x", "sha256": SHA, "size": -5},
            ["models[1] ('m')", "size must be >= 0", "-5"],
        ),
        (
            {"name": "m", "path": 12, "sha256": SHA, "size": 1},
            ["models[1] ('m')", "path must be a non-empty string"],
        ),
        (
            {"name": "m", "path": "/m/x", "sha256": SHA, "size": "1"},
            ["models[1] ('m')", "size must be an integer"],
        ),
        (
            {"name": "m", "path": "/m/x", "sha256": SHA, "size": 1, "gguf": "no"},
            ["models[1] ('m')", "gguf must be true or false"],
        ),
        ("just a string", ["models[1]", "expected a table/object"]),
        (dict(GOOD), ["models[1] ('good')", "duplicate model name 'good'", "also models[0]"]),
    ],
)
def test_from_file_bad_entry_names_file_and_entry(
    tmp_path: Path, item: object, facts: list[str]
) -> None:
    file = write_json(tmp_path, [GOOD, item])
    with pytest.raises(RegistryError) as info:
        Registry.from_file(file)
    message = str(info.value)
    assert message.startswith(f"{file}: ")
    for fact in facts:
        assert fact in message


def test_from_file_hal0_bad_metadata(tmp_path: Path) -> None:
    file = tmp_path / "registry.toml"
    file.write_text('[[models]]\nid = "m"\npath = "/m/x.gguf"\nsize_bytes = 1\nmetadata = 5\n')
    with pytest.raises(RegistryError, match=r"models\[0\] \('m'\): 'metadata' must be a table"):
        Registry.from_file(file)
    file.write_text('[[models]]\nid = "m"\npath = "/m/x.gguf"\nsize_bytes = 1\n[models.metadata]\n')
    assert not Registry.from_file(file)["m"].verified  # no sha256: unverified, not an error


@pytest.mark.parametrize(
    ("name", "text", "fact"),
    [
        ("bad.json", "[{", "cannot parse the registry"),
        ("bad.toml", "[[models]\n", "cannot parse the registry"),
        ("bad", "neither { json nor = toml [", "cannot parse the registry"),
        ("notlist.json", '{"models": 5}', "expected a list of models"),
        ("nomodels.toml", 'title = "x"\n', "expected a list of models"),
        ("scalar.json", "5", "expected a list of models"),
    ],
)
def test_from_file_unparsable(tmp_path: Path, name: str, text: str, fact: str) -> None:
    file = tmp_path / name
    file.write_text(text)
    with pytest.raises(RegistryError) as info:
        Registry.from_file(file)
    assert str(info.value).startswith(f"{file}: ")
    assert fact in str(info.value)


def test_from_file_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "r.json"
    file.write_bytes(b"\xff\xfe[]")
    with pytest.raises(RegistryError, match="cannot parse"):
        Registry.from_file(file)


def test_from_file_missing_file(tmp_path: Path) -> None:
    file = tmp_path / "nope.toml"
    with pytest.raises(RegistryError, match="cannot read the registry"):
        Registry.from_file(file)


def test_from_file_empty_list_is_an_empty_registry(tmp_path: Path) -> None:
    assert len(Registry.from_file(write_json(tmp_path, []))) == 0


# -- hal0's files as hal0 writes them ----------------------------------------

DATA = Path(__file__).parent / "data" / "hal0"
REFERENCE = Path(__file__).parents[1] / ".." / "shared" / "reference" / "hal0-registry"


@pytest.mark.parametrize("name", ["registry.toml", "registry-array.toml"])
def test_the_sample_files_are_the_reference_copies(name: str) -> None:
    if not REFERENCE.is_dir():
        pytest.skip("the shared reference is not beside this checkout")
    assert (DATA / name).read_bytes() == (REFERENCE / name).read_bytes()


def test_from_file_reads_hal0s_table_form() -> None:
    reg = Registry.from_file(DATA / "registry.toml")
    assert reg.names == ["hermes-4-14b", "qwen3-4b-q4_k_m", "nomic-embed-text-v1_5"]
    assert "Qwen3 4B (Q4_K_M)" not in reg  # the display name is not the model name
    qwen = reg["qwen3-4b-q4_k_m"]
    assert qwen == ModelEntry(
        name="qwen3-4b-q4_k_m",
        path="/srv/models/qwen3-4b-q4_k_m.gguf",
        sha256="9d3a1f0c2b7e4a6d8c5f1e0b3a2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c",
        size=2497281120,
    )
    drop_in = reg["hermes-4-14b"]  # scanned: no sha256, size 0
    assert (drop_in.verified, drop_in.size) == (False, None)
    assert reg["nomic-embed-text-v1_5"].verified


def test_from_file_reads_hal0s_array_form_and_refuses_an_entry_without_id() -> None:
    file = DATA / "registry-array.toml"
    with pytest.raises(RegistryError) as info:
        Registry.from_file(file)
    assert str(info.value) == f"{file}: models[2]: missing 'id' (hal0 skips entries without one)"

    loaded = Registry.from_file(file, strict=False)
    assert loaded.registry.names == ["qwen3-4b-q4_k_m", "hermes-4-14b"]
    assert loaded.registry["qwen3-4b-q4_k_m"].sha256 == (
        "9d3a1f0c2b7e4a6d8c5f1e0b3a2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a3b5c"
    )
    assert not loaded.registry["hermes-4-14b"].verified
    assert loaded.skipped == (
        SkippedEntry("models[2]", None, "missing 'id' (hal0 skips entries without one)"),
    )


def test_lenient_mode_skips_each_bad_entry_with_its_reason(tmp_path: Path) -> None:
    file = tmp_path / "registry.toml"
    file.write_text(
        f'[models.good]\npath = "/m/good.gguf"\n[models.good.metadata]\nsha256 = "{SHA}"\n'
        '[models.nopath]\nname = "No path"\n'
        '[models.badsize]\npath = "/m/b.gguf"\nsize_bytes = -1\n'
        '[models.badsha]\npath = "/m/c.gguf"\n[models.badsha.metadata]\nsha256 = "xyz"\n'
        '[models.drop-in]\npath = "/m/d.gguf"\n'
    )
    loaded = Registry.from_file(file, strict=False)
    assert isinstance(loaded, LoadedRegistry)
    assert loaded.registry.names == ["good", "drop-in"]
    assert [(s.where, s.name) for s in loaded.skipped] == [
        ("models.nopath", "nopath"),
        ("models.badsize", "badsize"),
        ("models.badsha", "badsha"),
    ]
    reasons = [s.reason for s in loaded.skipped]
    assert reasons[0] == "missing 'path'"
    assert "size must be >= 0" in reasons[1]
    assert "sha256 must be 64 hex digits" in reasons[2]
    assert str(loaded.skipped[0]) == "models.nopath ('nopath'): missing 'path'"
    with pytest.raises(RegistryError, match=r"models\.nopath \('nopath'\): missing 'path'"):
        Registry.from_file(file)


def test_lenient_mode_keeps_the_first_of_a_duplicate_name(tmp_path: Path) -> None:
    file = write_json(tmp_path, [GOOD, {**GOOD, "path": "/m/other.gguf"}])
    loaded = Registry.from_file(file, strict=False)
    assert [e.path for e in loaded.registry] == ["/m/good.gguf"]
    assert loaded.skipped == (
        SkippedEntry("models[1]", "good", "duplicate model name 'good' (also models[0])"),
    )


@pytest.mark.parametrize(("name", "text"), [("bad.json", "[{"), ("nolist.json", "5")])
def test_lenient_mode_still_refuses_a_file_it_cannot_read_as_a_registry(
    tmp_path: Path, name: str, text: str
) -> None:
    file = tmp_path / name
    file.write_text(text)
    with pytest.raises(RegistryError, match=str(file)):
        Registry.from_file(file, strict=False)


def test_from_file_reads_recipe_allow_unverified_and_a_top_level_sha256(tmp_path: Path) -> None:
    file = write_json(
        tmp_path,
        {
            "models": {
                "npu-model": {"path": "/m/n.bin", "recipe": "flm", "allow_unverified": True},
                "plain": {"path": "/m/p.gguf", "sha256": SHA, "size": 7},
            }
        },
    )
    reg = Registry.from_file(file)
    npu = reg["npu-model"]
    assert (npu.recipe, npu.allow_unverified, npu.gguf, npu.verified) == ("flm", True, False, False)
    assert (reg["plain"].sha256, reg["plain"].size) == (SHA, 7)


def test_an_id_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    file = write_json(tmp_path, [{"id": 5, "path": "/m/x.gguf"}])
    with pytest.raises(RegistryError, match=r"models\[0\]: model entry 5: name must be"):
        Registry.from_file(file)
