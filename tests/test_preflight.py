"""Before ``/load``: the server's own file for a name, and options it would evict everything for."""

from __future__ import annotations

from pathlib import Path

import pytest
from checks import loads_of
from kit import ControllerFactory

from slotfsm import ModelEntry, PreloadError, SlotConfig, SlotState
from slotfsm.preflight import RESERVED_ARGS, check_args, file_for_checkpoint
from slotfsm.testing import FakeLemonade, FakeModel
from slotfsm.testing.files import write_model

pytestmark = pytest.mark.anyio


async def test_a_registry_path_that_is_not_the_servers_file_is_refused_and_nothing_sent(
    fake: FakeLemonade, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    (tmp_path / "server-models").mkdir()
    elsewhere = write_model(tmp_path / "server-models", "alpha")
    fake.add_model(FakeModel.for_file("omega", elsewhere.path))
    registry_entry = write_model(tmp_path, "omega")  # a sound file, but not the server's
    async with make_controller(SlotConfig("chat")) as ctl:
        ctl.replace_registry([registry_entry])
        snap = await ctl.load("chat", "omega")
    assert snap.state is SlotState.ERROR and snap.error is not None
    assert snap.error.kind is PreloadError.CHECKPOINT_MISMATCH
    assert snap.error.found == str(elsewhere.path) and "nothing sent" in snap.error.message
    assert loads_of(fake, "omega") == [] and fake.unloads() == []


async def test_a_swap_refused_before_the_load_keeps_the_old_model(
    fake: FakeLemonade, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    (tmp_path / "server-models").mkdir()
    elsewhere = write_model(tmp_path / "server-models", "omega")
    fake.add_model(FakeModel.for_file("omega", elsewhere.path))
    async with make_controller(SlotConfig("chat")) as ctl:
        await ctl.load("chat", "alpha")
        ctl.replace_registry([*ctl.registry, write_model(tmp_path, "omega")])
        snap = await ctl.load("chat", "omega")
    assert (snap.state, snap.model) == (SlotState.LOADED, "alpha")
    assert snap.error is not None and snap.error.kind is PreloadError.CHECKPOINT_MISMATCH
    assert fake.unloads() == []  # the old model was never touched


async def test_a_hub_model_is_not_guessed_at(
    fake: FakeLemonade, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    """The server names no local file before the load; after it, its -m file is checked."""
    hub = FakeModel("hub-model")  # a built-in: checkpoint org/repo:QUANT, file in the HF cache
    fake.add_model(hub)
    entry = write_model(tmp_path, "hub-model")
    async with make_controller(SlotConfig("chat")) as ctl:
        ctl.replace_registry([entry])
        snap = await ctl.load("chat", "hub-model")
    assert (snap.state, snap.model) == (SlotState.LOADED, "hub-model")
    # loaded, and reported: the server's file is its cache's, not the one validated
    assert snap.error is not None and snap.error.kind is PreloadError.CHECKPOINT_MISMATCH
    assert snap.error.found == hub.model_file
    assert snap.checkpoint_confirmed is False


async def test_a_confirmed_file_says_so(make_controller: ControllerFactory) -> None:
    async with make_controller(SlotConfig("chat")) as ctl:
        snap = await ctl.load("chat", "alpha")
    assert snap.checkpoint_confirmed is True and snap.to_dict()["checkpoint_confirmed"] is True


@pytest.mark.parametrize(
    ("options", "fact"),
    [
        ({"llamacpp_backend": "vulkan"}, "llamacpp_backend 'vulkan' is state 'unsupported'"),
        ({"llamacpp_backend": "tpu"}, "not a backend this server knows"),
        ({"llamacpp_args": "--threads 2 --port 9999"}, "'--port'"),
        ({"llamacpp_args": "-m=/other.gguf"}, "'-m'"),
    ],
    ids=["unsupported-backend", "unknown-backend", "reserved-port", "reserved-model"],
)
async def test_options_the_server_would_evict_everything_for_are_refused(
    fake: FakeLemonade,
    make_controller: ControllerFactory,
    options: dict[str, str],
    fact: str,
) -> None:
    async with make_controller(SlotConfig("keep"), SlotConfig("chat", **options)) as ctl:
        await ctl.load("keep", "beta")
        snap = await ctl.load("chat", "alpha")
        assert snap.state is SlotState.ERROR and snap.error is not None
        assert snap.error.kind is PreloadError.OPTION_REFUSED and fact in snap.error.message
        assert loads_of(fake, "alpha") == [] and fake.evict_all_count == 0
        assert ctl.snapshot("keep").model == "beta"


async def test_auto_and_an_installed_backend_load(
    fake: FakeLemonade, make_controller: ControllerFactory
) -> None:
    async with make_controller(
        SlotConfig("a", llamacpp_backend="auto"), SlotConfig("b", llamacpp_backend="cpu")
    ) as ctl:
        assert (await ctl.load("a", "alpha")).state is SlotState.LOADED
        assert (await ctl.load("b", "beta")).state is SlotState.LOADED
    assert fake.evict_all_count == 0


async def test_a_prefixed_name_ends_loaded_under_its_canonical_name(
    fake: FakeLemonade, make_controller: ControllerFactory, models: dict[str, ModelEntry]
) -> None:
    """``extra.X``: /load echoes it, /health lists X; the slot holds X, nothing unmanaged."""
    prefixed = ModelEntry(
        name="extra.alpha",
        path=models["alpha"].path,
        sha256=models["alpha"].sha256,
        size=models["alpha"].size,
    )
    async with make_controller(SlotConfig("chat")) as ctl:
        ctl.replace_registry([prefixed])
        snap = await ctl.load("chat", "extra.alpha")
        assert (snap.state, snap.model, snap.error) == (SlotState.LOADED, "alpha", None)
        await ctl.refresh()
        assert ctl.snapshot("chat").state is SlotState.LOADED  # matched by canonical name
        assert ctl.ledger.owner_of("alpha") == "chat" and ctl.ledger.owed() == ()
        await ctl.unload("chat")
    assert fake.loaded_models() == []


def test_reserved_arguments_are_the_servers() -> None:
    assert {"--port", "-m", "--ctx-size", "--model"} <= RESERVED_ARGS
    assert check_args("m", {"llamacpp_args": "--threads 4 --temp 0.2"}) is None
    refused = check_args("m", {"llamacpp_args": '--port "1"'})
    assert refused is not None and refused.kind is PreloadError.OPTION_REFUSED


def test_the_file_of_a_checkpoint(tmp_path: Path) -> None:
    assert file_for_checkpoint("unsloth/Qwen3-0.6B-GGUF:Q4_0") is None
    assert file_for_checkpoint(None) is None
    folder = tmp_path / "D"
    folder.mkdir()
    for name in ("b.gguf", "a-mmproj.gguf", "c.gguf", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert file_for_checkpoint(str(folder)) == folder / "b.gguf"  # first non-mmproj, by name
    assert file_for_checkpoint(str(folder / "c.gguf")) == folder / "c.gguf"


async def test_a_name_the_server_lists_otherwise_is_refused_before_anything_is_sent(
    fake: FakeLemonade, models: dict[str, ModelEntry]
) -> None:
    """The ledger and /health match by the server's own id: a name it calls differently is
    refused with that id in the message, not loaded and then mistaken for evicted."""
    import httpx

    from slotfsm import Controller

    inner = fake.transport()

    class Renaming(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/api/v1/models/alpha":
                return httpx.Response(200, json={"id": "alpha-q4", "checkpoint": "org/a:Q4"})
            return await inner.handle_async_request(request)

    async with Controller(
        lemonade_url="http://lemonade",
        registry=list(models.values()),
        slots=[SlotConfig("chat")],
        transport=Renaming(),
    ) as ctl:
        snap = await ctl.load("chat", "alpha")
    assert snap.state is SlotState.ERROR and snap.error is not None
    assert snap.error.found == "alpha-q4" and "nothing sent" in snap.error.message
    assert loads_of(fake, "alpha") == []
