"""File faults before a load: what pre-load validation stops, and the race it accepts.

Every test goes through ``Controller.load`` against the fake Lemonade on a
real loopback socket, with slot ``b`` holding ``beta`` as the bystander.
When validation fails, no ``/load`` for that model reaches the server.

The four "between validation and /load" tests show the race ADR-0007 §1
accepts: the file is changed while the slot's ``/load`` is held at the
server (``fake.hanging`` + ``fake.wait_hanging``: validation is over and the
request has arrived), and the server's answer is set to what Lemonade would
say about the file it then finds.  slotfsm has sent the ``/load`` once, as
the ADR accepts, and reports whatever comes back; the next validation of the
same file catches the change before the server hears of it again.

The tests run as root, which reads a ``chmod 000`` file: "permission denied"
is simulated with a monkeypatched ``os.open``, as ``tests/test_preload.py``
does.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from checks import failed, holds, loads_of

import slotfsm.controller
from slotfsm import (
    Controller,
    Failure,
    ModelEntry,
    PreloadError,
    SlotConfig,
    SlotSnapshot,
    SlotState,
)
from slotfsm.testing import FakeLemonade
from slotfsm.testing.files import Flaw, gguf_bytes, write_model

pytestmark = pytest.mark.anyio

PROMPTLY = 5.0
"""A bound on things that take milliseconds: it only turns a hang into a failure."""
AT_ONCE = 2.0
"""A bound on a rejection decided by ``stat`` alone (a FIFO or /dev/zero opened would hang)."""


def controller(url: str, entries: Iterable[ModelEntry]) -> Controller:
    slots = [SlotConfig("a"), SlotConfig("b"), SlotConfig("c")]
    return Controller(lemonade_url=url, registry=list(entries), slots=slots, http_timeout=PROMPTLY)


def deny_open(monkeypatch: pytest.MonkeyPatch, path: str | Path) -> None:
    """``os.open`` of ``path`` fails with EACCES (root would read it through chmod 000)."""
    real = os.open
    denied = os.fspath(path)

    def open_unless_denied(target: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(target) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", denied)
        return real(target, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_unless_denied)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path ``os.open`` is called with (the calls go through)."""
    calls: list[str] = []
    real = os.open

    def recording(target: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        calls.append(os.fspath(target))
        return real(target, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording)
    return calls


async def load_across_the_race(
    ctl: Controller, fake: FakeLemonade, slot: str, model: str, change: Callable[[], None]
) -> SlotSnapshot:
    """Load ``model``; run ``change`` once its ``/load`` is at the server; return the result."""
    hang = fake.hanging(model)
    result: dict[str, SlotSnapshot] = {}

    async def load() -> None:
        result[slot] = await ctl.load(slot, model)

    async with anyio.create_task_group() as tg:
        tg.start_soon(load)
        with anyio.fail_after(PROMPTLY):
            await fake.wait_hanging(model)
        # Validation passed and the /load is at the server: the window ADR-0007 accepts.
        assert ctl.snapshot(slot).state is SlotState.LOADING
        assert len(loads_of(fake, model)) == 1
        change()
        hang.off()
    return result[slot]


async def refused(
    fake: FakeLemonade,
    entries: Iterable[ModelEntry],
    model: str,
    kind: PreloadError,
    *facts: str,
    within: float = PROMPTLY,
) -> Failure:
    """Load ``model`` into slot ``a`` while ``b`` holds beta; return the failure.

    The load fails with ``kind`` saying every fact, within ``within``
    seconds; nothing is sent for ``model``; ``b`` keeps beta and ``c`` can
    still load gamma.
    """
    async with fake.serve() as url, controller(url, entries) as ctl:
        holds(await ctl.load("b", "beta"), "beta")
        with anyio.fail_after(within):
            snap = await ctl.load("a", model)
        failed(snap, SlotState.ERROR, kind, *facts)
        holds(ctl.snapshot("b"), "beta")
        holds(await ctl.load("c", "gamma"), "gamma")
    assert loads_of(fake, model) == []
    assert snap.error is not None
    return snap.error


# -- the accepted race: the file changes between validation and /load ----------------------


async def test_file_deleted_between_validation_and_load(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    """The accepted race (ADR-0007 §1): a file deleted after validation is loaded as it is then.

    Lemonade answers a file that is gone with a "No such file" failure, which
    touches no other model; slotfsm reports it, and the next validation says
    the file is missing without sending anything.
    """
    path = Path(models["alpha"].path)

    def delete() -> None:
        path.unlink()
        fake.failing("alpha", f"llama-server failed to start: {path}: No such file or directory")

    async with fake.serve() as url, controller(url, models.values()) as ctl:
        holds(await ctl.load("b", "beta"), "beta")
        snap = await load_across_the_race(ctl, fake, "a", "alpha", delete)
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_FAILED,
            "loading 'alpha' failed: POST /api/v1/load: HTTP 500",
            f"{path}: No such file or directory",
        )
        holds(ctl.snapshot("b"), "beta")
        assert fake.evict_all_count == 0

        again = await ctl.load("a", "alpha")
        failed(
            again, SlotState.ERROR, PreloadError.FILE_MISSING, f"model file {path} does not exist"
        )
        holds(await ctl.load("c", "gamma"), "gamma")
    assert len(loads_of(fake, "alpha")) == 1
    assert fake.loaded_models() == ["beta", "gamma"]


async def test_file_replaced_between_validation_and_load(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    """The accepted race (ADR-0007 §1): a file replaced after validation is loaded as it is then.

    Here the replacement is a sound GGUF of the same size with other bytes, and
    the server loads it: slotfsm reports ``loaded`` (it cannot know which bytes
    the server read).  The next validation of that file sees the sha256 change
    and keeps the slot's model without sending anything.
    """
    entry = models["alpha"]
    path = Path(entry.path)

    def replace() -> None:
        fresh = path.with_name("alpha.gguf.download")
        fresh.write_bytes(gguf_bytes(entry.size, seed=999))
        os.replace(fresh, path)  # as download tooling does: a new inode, same size

    async with fake.serve() as url, controller(url, models.values()) as ctl:
        holds(await ctl.load("b", "beta"), "beta")
        snap = await load_across_the_race(ctl, fake, "a", "alpha", replace)
        holds(snap, "alpha")
        assert (await anyio.Path(path).stat()).st_size == entry.size

        again = await ctl.load("a", "alpha")
        assert (again.state, again.model) == (SlotState.LOADED, "alpha")  # kept
        failed(
            again,
            SlotState.LOADED,
            PreloadError.SHA256_MISMATCH,
            f"sha256 of {path} is ",
            f"registry says {entry.sha256}",
        )
        holds(ctl.snapshot("b"), "beta")
        holds(await ctl.load("c", "gamma"), "gamma")
    assert len(loads_of(fake, "alpha")) == 1
    assert fake.evict_all_count == 0


async def test_file_truncated_between_validation_and_load(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    """The accepted race (ADR-0007 §1): a file truncated after validation is loaded as it is then.

    Lemonade's backend fails to start on a truncated GGUF, and that message
    triggers its evict-all (the retry fails too): slotfsm reports the failed
    load and, before ``load()`` returns, that slot b's model was evicted.  The
    next validation rejects the file by its size, sending nothing.
    """
    entry = models["alpha"]
    path = Path(entry.path)

    def truncate() -> None:
        os.truncate(path, entry.size // 2)
        fake.failing("alpha", "llama-server failed to start")

    async with fake.serve() as url, controller(url, models.values()) as ctl:
        holds(await ctl.load("b", "beta"), "beta")
        snap = await load_across_the_race(ctl, fake, "a", "alpha", truncate)
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.LOAD_FAILED,
            "Failed to load model 'alpha': llama-server failed to start",
        )
        assert fake.evict_all_count == 1
        failed(
            ctl.snapshot("b"),
            SlotState.IDLE,
            PreloadError.EVICTED,
            "model 'beta' was evicted by the server",
        )

        again = await ctl.load("a", "alpha")
        failed(
            again,
            SlotState.ERROR,
            PreloadError.SIZE_MISMATCH,
            f"size of {path} is {entry.size // 2} bytes, registry says {entry.size}",
        )
        holds(await ctl.load("c", "gamma"), "gamma")
    assert len(loads_of(fake, "alpha")) == 1
    assert fake.loaded_models() == ["gamma"]


async def test_file_made_unreadable_between_validation_and_load(
    fake: FakeLemonade, models: dict[str, ModelEntry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accepted race (ADR-0007 §1): a file made unreadable after validation is sent anyway.

    The server's backend cannot open it; "Permission denied" is not one of the
    phrases that spare the other models, so Lemonade evicts everything.
    slotfsm reports both.  The next validation says the file is unreadable
    (simulated with ``os.open`` for root, who reads through ``chmod 000``).
    """
    path = Path(models["alpha"].path)

    def make_unreadable() -> None:
        path.chmod(0)
        fake.failing("alpha", f"llama-server failed to start: {path}: Permission denied")

    try:
        async with fake.serve() as url, controller(url, models.values()) as ctl:
            holds(await ctl.load("b", "beta"), "beta")
            snap = await load_across_the_race(ctl, fake, "a", "alpha", make_unreadable)
            failed(snap, SlotState.ERROR, PreloadError.LOAD_FAILED, f"{path}: Permission denied")
            assert fake.evict_all_count == 1
            failed(ctl.snapshot("b"), SlotState.IDLE, PreloadError.EVICTED, "'beta' was evicted")

            if os.geteuid() == 0:
                deny_open(monkeypatch, path)
            again = await ctl.load("a", "alpha")
            failed(
                again,
                SlotState.ERROR,
                PreloadError.UNREADABLE,
                f"model file {path}: cannot open it: Permission denied",
            )
            holds(await ctl.load("c", "gamma"), "gamma")
    finally:
        await anyio.Path(path).chmod(0o644)
    assert len(loads_of(fake, "alpha")) == 1


# -- validation stops it: nothing reaches the server ----------------------------------------


async def test_permission_denied(
    fake: FakeLemonade, models: dict[str, ModelEntry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EACCES from ``os.open`` (simulated: the tests run as root)."""
    path = models["alpha"].path
    deny_open(monkeypatch, path)
    await refused(
        fake,
        models.values(),
        "alpha",
        PreloadError.UNREADABLE,
        f"model file {path}: cannot open it: Permission denied (model 'alpha')",
    )


async def test_symlink_to_a_sound_file_is_followed(
    fake: FakeLemonade, models: dict[str, ModelEntry], tmp_path: Path
) -> None:
    link = tmp_path / "links" / "alpha.gguf"
    link.parent.mkdir()
    link.symlink_to(models["alpha"].path)
    entries = {**models, "alpha": attrs.evolve(models["alpha"], path=str(link))}
    async with fake.serve() as url, controller(url, entries.values()) as ctl:
        holds(await ctl.load("b", "beta"), "beta")
        holds(await ctl.load("a", "alpha"), "alpha")
    assert len(loads_of(fake, "alpha")) == 1


async def test_symlink_to_a_bad_file_names_its_target(
    fake: FakeLemonade, models: dict[str, ModelEntry], tmp_path: Path
) -> None:
    """The target is what is validated, and the failure names the link and its target."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    target = Path(write_model(blobs, "alpha", flaw=Flaw.SHA256).path)  # alpha's bytes, one flipped
    link = tmp_path / "links" / "alpha.gguf"
    link.parent.mkdir()
    link.symlink_to(target)
    entries = {**models, "alpha": attrs.evolve(models["alpha"], path=str(link))}
    resolved = await anyio.Path(target).resolve()
    failure = await refused(
        fake,
        entries.values(),
        "alpha",
        PreloadError.SHA256_MISMATCH,
        f"sha256 of {link} (symlink to {resolved}) is ",
    )
    assert failure.path == str(link)


async def test_dangling_symlink(
    fake: FakeLemonade, models: dict[str, ModelEntry], tmp_path: Path
) -> None:
    target = tmp_path / "blobs" / "sha256-0123abcd"
    link = tmp_path / "links" / "alpha.gguf"
    link.parent.mkdir()
    link.symlink_to(target)
    entries = {**models, "alpha": attrs.evolve(models["alpha"], path=str(link))}
    resolved = await anyio.Path(target).resolve()
    await refused(
        fake,
        entries.values(),
        "alpha",
        PreloadError.FILE_MISSING,
        f"model file {link} is a dangling symlink to {resolved}, which does not exist",
    )


async def check_not_a_file(
    fake: FakeLemonade,
    models: dict[str, ModelEntry],
    opened: list[str],
    path: str | Path,
    what: str,
) -> None:
    """``path`` is rejected as NOT_A_FILE at once, is never opened, and nothing is sent."""
    path = os.fspath(path)
    entry = ModelEntry(name="odd", path=path, sha256=models["alpha"].sha256, size=4096)
    fake.add_model("odd")
    failure = await refused(
        fake,
        [*models.values(), entry],
        "odd",
        PreloadError.NOT_A_FILE,
        f"{path} is a {what}, not a regular file",
        within=AT_ONCE,
    )
    assert (failure.expected, failure.found) == ("regular file", what)
    assert models["beta"].path in opened  # the recorder sees validation's opens
    assert path not in opened


async def test_directory_is_not_a_file(
    fake: FakeLemonade, models: dict[str, ModelEntry], opened: list[str], tmp_path: Path
) -> None:
    directory = tmp_path / "odd.gguf"
    directory.mkdir()
    await check_not_a_file(fake, models, opened, directory, "directory")


async def test_fifo_is_not_a_file(
    fake: FakeLemonade, models: dict[str, ModelEntry], opened: list[str], tmp_path: Path
) -> None:
    fifo = tmp_path / "odd.gguf"
    os.mkfifo(fifo)
    await check_not_a_file(fake, models, opened, fifo, "FIFO")


async def test_dev_zero_is_not_a_file(
    fake: FakeLemonade, models: dict[str, ModelEntry], opened: list[str]
) -> None:
    await check_not_a_file(fake, models, opened, "/dev/zero", "character device")


async def test_file_that_grows_while_it_is_hashed(
    fake: FakeLemonade, models: dict[str, ModelEntry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes appended during the hash: UNREADABLE, "changed while it was being hashed".

    The append happens from validation's progress callback (after the last
    chunk), injected by wrapping the controller's ``validate``.
    """
    entry = models["alpha"]
    path = Path(entry.path)
    real_validate = slotfsm.controller.validate
    grown: list[int] = []

    def append(done: int, total: int) -> None:
        if done == total and not grown:
            with path.open("ab") as file:
                grown.append(file.write(b"more"))

    async def validate_while_it_grows(target: ModelEntry, **options: Any) -> Any:
        if target.name == "alpha":
            options["progress"] = append
        return await real_validate(target, **options)

    monkeypatch.setattr(slotfsm.controller, "validate", validate_while_it_grows)
    async with fake.serve() as url, controller(url, models.values()) as ctl:
        holds(await ctl.load("b", "beta"), "beta")
        snap = await ctl.load("a", "alpha")
        failed(
            snap,
            SlotState.ERROR,
            PreloadError.UNREADABLE,
            f"model file {path} changed while it was being hashed",
            "not verified, try again",
        )
        assert snap.error is not None
        assert f"size {entry.size}," in (snap.error.expected or "")
        assert f"size {entry.size + 4}," in (snap.error.found or "")
        assert grown == [4]

        again = await ctl.load("a", "alpha")  # it has grown for good: now its size is wrong
        failed(again, SlotState.ERROR, PreloadError.SIZE_MISMATCH, f"is {entry.size + 4} bytes")
        holds(ctl.snapshot("b"), "beta")
        holds(await ctl.load("c", "gamma"), "gamma")
    assert loads_of(fake, "alpha") == []


async def test_an_unverified_entry_is_refused_before_the_server_hears_of_it(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    """A drop-in without sha256 (hal0 scans such files) fails validation by default.

    The file itself is sound; nothing is sent for it.
    """
    drop_in = ModelEntry(name="drop-in", path=models["alpha"].path, size=None)
    fake.add_model("drop-in")
    failure = await refused(
        fake,
        [*models.values(), drop_in],
        "drop-in",
        PreloadError.SHA256_MISMATCH,
        f"the registry has no sha256 for {drop_in.path}",
    )
    assert failure.expected is None
