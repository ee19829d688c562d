"""``slotfsm validate``: exit codes, messages, the registry form, the cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slotfsm import cli
from slotfsm.preload import FingerprintCache, fingerprint_of

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def cache_file(cache_home: Path) -> Path:
    return cache_home / "slotfsm" / "fingerprints.json"


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, bytes]:
    data = b"GGUF" + bytes(20) + os.urandom(500)
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    return path, data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_pass_exits_0_with_an_ok_line(
    capsys: pytest.CaptureFixture[str], model: tuple[Path, bytes], cache_home: Path
) -> None:
    path, data = model
    status, out, err = run(
        capsys, "validate", str(path), "--sha256", sha(data), "--size", str(len(data))
    )
    assert status == 0
    assert out == f"ok: {path} (model 'model.gguf')\n"
    assert err == ""
    assert len(FingerprintCache.load(cache_file(cache_home), min_age=0)) == 0  # written, young
    assert cache_file(cache_home).is_file()


def test_sha256_mismatch_exits_1_with_the_kind_on_stderr(
    capsys: pytest.CaptureFixture[str], model: tuple[Path, bytes]
) -> None:
    path, data = model
    status, out, err = run(capsys, "validate", str(path), "--sha256", "0" * 64, "--size", "0")
    assert status == 1
    assert out == ""
    assert err.startswith("SHA256_MISMATCH: ")
    assert str(path) in err
    assert sha(data) in err
    assert "0" * 64 in err


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ({"size": "1"}, "SIZE_MISMATCH"),
        ({"path": "/nonexistent/model.gguf"}, "FILE_MISSING"),
        ({"path": "/dev/null"}, "NOT_A_FILE"),
    ],
)
def test_other_failures_exit_1(
    capsys: pytest.CaptureFixture[str],
    model: tuple[Path, bytes],
    change: dict[str, str],
    kind: str,
) -> None:
    path, data = model
    args = {"path": str(path), "size": str(len(data)), **change}
    status, _, err = run(
        capsys, "validate", args["path"], "--sha256", sha(data), "--size", args["size"]
    )
    assert status == 1
    assert err.startswith(f"{kind}: ")
    assert args["path"] in err


def test_not_gguf_skips_the_magic(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = b"kokoro voice weights"
    path = tmp_path / "voice.bin"
    path.write_bytes(data)
    argv = ["validate", str(path), "--sha256", sha(data), "--size", str(len(data))]
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert err.startswith("BAD_MAGIC: ")
    status, out, _ = run(capsys, *argv, "--not-gguf")
    assert status == 0
    assert out.startswith("ok: ")


@pytest.mark.parametrize(
    ("argv", "fact"),
    [
        (["validate", "x.gguf"], "needs --sha256 and --size"),
        (["validate", "x.gguf", "--sha256", "a" * 64], "needs --sha256 and --size"),
        (["validate", "x.gguf", "--sha256", "xyz", "--size", "1"], "sha256 must be 64 hex"),
        (["validate", "x.gguf", "--sha256", "a" * 64, "--size", "-1"], "size must be >= 0"),
        (["validate", "x.gguf", "--sha256", "a" * 64, "--size", "ten"], "invalid int value"),
        (["validate", "x", "--registry", "r.json", "--size", "1"], "--size cannot be combined"),
        (["validate", "x", "--hash-policy", "sometimes"], "invalid choice"),
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], fact: str
) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert fact in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "validate", "--help")
    assert status == 0
    assert "--registry" in out
    assert "--hash-policy" in out


def write_registry(tmp_path: Path, path: Path, data: bytes) -> Path:
    registry = tmp_path / "registry.toml"
    registry.write_text(
        "[[models]]\n"
        'id = "tiny"\n'
        'name = "Tiny-GGUF"\n'
        f'path = "{path}"\n'
        f"size_bytes = {len(data)}\n"
        "[models.metadata]\n"
        f'sha256 = "{sha(data)}"\n'
    )
    return registry


def test_registry_form(
    capsys: pytest.CaptureFixture[str], model: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = model
    registry = write_registry(tmp_path, path, data)
    status, out, _ = run(capsys, "validate", "--registry", str(registry), "tiny")
    assert status == 0
    assert out == f"ok: {path} (model 'tiny')\n"

    path.write_bytes(data[:-1] + b"!")
    status, _, err = run(capsys, "validate", "--registry", str(registry), "tiny")
    assert status == 1
    assert err.startswith("SHA256_MISMATCH: ")
    assert "'tiny'" in err


def test_registry_unknown_name_exits_2(
    capsys: pytest.CaptureFixture[str], model: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = model
    registry = write_registry(tmp_path, path, data)
    status, _, err = run(capsys, "validate", "--registry", str(registry), "nope")
    assert status == 2
    assert "no model named 'nope'" in err
    assert "'tiny'" in err


def test_bad_registry_exits_2_naming_file_and_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps([{"name": "m", "path": "/m/x", "sha256": "abc", "size": 1}]))
    status, _, err = run(capsys, "validate", "--registry", str(registry), "m")
    assert status == 2
    assert f"{registry}: models[0] ('m')" in err
    assert "sha256 must be 64 hex digits" in err


def test_the_cache_is_read_from_xdg_cache_home(
    capsys: pytest.CaptureFixture[str], model: tuple[Path, bytes], cache_home: Path
) -> None:
    # A cache entry claiming this exact file state hashes to another sha256:
    # under the fingerprint policy the command trusts it, under always not.
    path, _ = model
    claimed = "c" * 64
    poisoned = FingerprintCache(min_age=0)
    poisoned.remember(fingerprint_of(os.stat(path)), claimed)
    poisoned.save(cache_file(cache_home))
    argv = ["validate", str(path), "--sha256", claimed, "--size", "0"]

    status, _, _ = run(capsys, *argv)
    assert status == 0
    status, _, err = run(capsys, *argv, "--hash-policy", "always")
    assert status == 1
    assert err.startswith("SHA256_MISMATCH: ")


def test_a_corrupt_cache_file_is_ignored(
    capsys: pytest.CaptureFixture[str], model: tuple[Path, bytes], cache_home: Path
) -> None:
    path, data = model
    cache_file(cache_home).parent.mkdir(parents=True)
    cache_file(cache_home).write_text("{not json")
    status, _, _ = run(capsys, "validate", str(path), "--sha256", sha(data), "--size", "0")
    assert status == 0
    json.loads(cache_file(cache_home).read_text())  # rewritten whole


def test_an_unwritable_cache_warns_but_passes(
    capsys: pytest.CaptureFixture[str], model: tuple[Path, bytes], cache_home: Path
) -> None:
    path, data = model
    cache_file(cache_home).mkdir(parents=True)  # a directory where the file goes
    status, out, err = run(capsys, "validate", str(path), "--sha256", sha(data), "--size", "0")
    assert status == 0
    assert out.startswith("ok: ")
    assert err.startswith("warning: cannot save the fingerprint cache")


@pytest.fixture
def large_file(tmp_path: Path) -> tuple[Path, str]:
    """A sparse file just over the progress threshold, and its sha256."""
    size = cli.PROGRESS_MIN_BYTES + MiB
    path = tmp_path / "large.bin"
    with path.open("wb") as file:
        file.truncate(size)
    digest = hashlib.sha256()
    zeros = bytes(MiB)
    for _ in range(size // MiB):
        digest.update(zeros)
    return path, digest.hexdigest()


def test_no_progress_when_not_a_terminal(
    capsys: pytest.CaptureFixture[str], large_file: tuple[Path, str]
) -> None:
    path, digest = large_file
    argv = ["validate", str(path), "--sha256", digest, "--size", "0", "--not-gguf"]
    status, out, err = run(capsys, *argv)
    assert status == 0
    assert out.startswith("ok: ")
    assert err == ""


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    large_file: tuple[Path, str],
) -> None:
    path, digest = large_file
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["validate", str(path), "--sha256", digest, "--size", "0", "--not-gguf"]
    assert cli.main([*argv, "--hash-policy", "always"]) == 0
    shown = terminal.getvalue()
    assert f"\r\x1b[Khashing {path}: " in shown
    assert "/ 65 MiB (100%)" in shown  # the last chunk is always shown
    assert "MiB/s, ETA" in shown
    assert shown.endswith("\r\x1b[K")  # cleared at the end
    assert capsys.readouterr().out.startswith("ok: ")


def test_progress_is_not_shown_for_small_files(
    monkeypatch: pytest.MonkeyPatch, model: tuple[Path, bytes]
) -> None:
    path, data = model
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["validate", str(path), "--sha256", sha(data), "--size", "0"]) == 0
    assert terminal.getvalue() == ""


def test_progress_line() -> None:
    line = cli._progress_line("m.gguf", 512 * MiB, 2048 * MiB, 2.0)
    assert line == "hashing m.gguf: 512 / 2,048 MiB (25%), 256 MiB/s, ETA 6 s"


def test_python_dash_m_slotfsm(model: tuple[Path, bytes], cache_home: Path) -> None:
    path, data = model
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    argv = [sys.executable, "-m", "slotfsm", "validate", str(path), "--size", str(len(data))]
    good = subprocess.run(
        [*argv, "--sha256", sha(data)], capture_output=True, text=True, env=env, check=False
    )
    assert (good.returncode, good.stderr) == (0, "")
    assert good.stdout.startswith("ok: ")
    assert cache_file(cache_home).is_file()

    bad = subprocess.run(
        [*argv, "--sha256", "f" * 64], capture_output=True, text=True, env=env, check=False
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("SHA256_MISMATCH: ")
    assert bad.stdout == ""
