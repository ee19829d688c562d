"""The fake against the real server: every recorded scenario replayed and compared.

``tests/data/lemonade-transcripts.json`` is a byte-identical copy of
``../shared/reference/lemonade-transcripts.json``: requests sent to a real
Lemonade 11.7.0 and what it answered, with ``/health`` after each step.  Each
scenario is replayed against ``FakeLemonade`` and every status, body and
``/health`` reading is compared with the recorded one, after the file's own
normalization (its ``normalization`` field; :func:`normalize` applies the same
rules to the fake's answers).  The few values that cannot be equal are listed,
with the reason, in ``FIELD_RULES``; everything else must be equal.

Three ways to replay:

- on trio's virtual clock with ``FakeTiming.REAL``: every scenario, and the
  times too (each step's duration, and when each concurrent step finished);
- in process on asyncio and trio, instantly: every scenario that does not
  depend on time (``needs_time``);
- on a loopback socket, instantly: the scenarios about what goes over the wire.

A step the fake cannot reproduce fails the test; nothing is skipped.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

from slotfsm.testing import HEALTH_TYPES, FakeLemonade, FakeModel, FakeTiming, Hang

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data" / "lemonade-transcripts.json"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / DATA.name
TRANSCRIPTS: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
SCENARIOS: dict[str, dict[str, Any]] = {s["name"]: s for s in TRANSCRIPTS["scenarios"]}

# -- how values are compared: the one place ----------------------------------------------

Rule = Callable[[object, object], bool | None]
"""``True``/``False``: the value passes or not; ``None``: the rule does not apply to it."""


def same_type(expected: object, actual: object) -> bool:
    """Equal JSON types (``true`` is not a number)."""
    return type(expected) is type(actual)


def equal_after(pattern: str, replacement: str) -> Rule:
    """Equal once ``pattern`` is replaced in both strings (for a recorded string)."""

    def rule(expected: object, actual: object) -> bool | None:
        if not isinstance(expected, str):
            return None
        if not isinstance(actual, str):
            return False
        return re.sub(pattern, replacement, expected) == re.sub(pattern, replacement, actual)

    return rule


def not_modelled(expected: object, actual: object) -> bool:
    """Not compared, and may be absent from the fake's answer."""
    return True


FIELD_RULES: tuple[tuple[str, Rule, str], ...] = (
    (
        r"^error$",
        equal_after(r"parse error at line \d+, column \d+: .*", "parse error <where>: <what>"),
        "where and how the JSON parser words a syntax error is nlohmann::json's own",
    ),
    (
        r"^error\.message$",
        equal_after(r"Available models include: .* and \d+ more\.", "Available models: <list>."),
        "the real server names three of its own ~90 built-in models",
    ),
    (
        r"^usage\.(prompt_tokens|total_tokens)$",
        same_type,
        "counted by the real model's tokenizer and chat template",
    ),
    (r"^system_fingerprint$", same_type, "the llama.cpp build"),
    (
        r"^(OS Version|Physical Memory|Processor|cloud|devices|model_storage"
        r"|no_fetch_executables)$",
        not_modelled,
        "facts about the recording host",
    ),
    (
        r"^recipes\.llamacpp\.(display_name|experimental|modality|options|order"
        r"|selectable_backend|slot_policy|support|uses_ctx_size|web_display_name)$",
        not_modelled,
        "the recipe's catalog text; slotfsm reads only the backends and their states",
    ),
    (
        r"^recipes\.llamacpp\.backends\.[^.]+\.(action|devices|message)$",
        same_type,
        "what the recording host's hardware allowed",
    ),
    (
        r"^recipes\.llamacpp\.backends\.[^.]+\.(download_filename|release_url|version"
        r"|can_uninstall)$",
        not_modelled,
        "release files of the backends",
    ),
)
"""``(path pattern, rule, why)``: how the few values that cannot be equal are compared.

A path is dotted keys from the body's root, ``[]`` for a list element
(``all_models_loaded[].pid``).  Every other value must be equal.
"""

TIME_TOLERANCE_S = 0.75
"""Durations and finish times, virtual against recorded (a tiny load took 0.1 to 0.7 s)."""


def rule_for(path: str) -> Rule | None:
    for pattern, rule, _ in FIELD_RULES:
        if re.search(pattern, path):
            return rule
    return None


def differences(expected: object, actual: object, path: str = "") -> Iterator[str]:
    """Every place where ``actual`` is not what ``expected`` recorded."""
    rule = rule_for(path)
    where = path or "<root>"
    verdict = rule(expected, actual) if rule is not None else None
    if verdict is not None:
        if not verdict:
            yield f"{where}: recorded {expected!r}, fake {actual!r}"
        return
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(expected.keys() | actual.keys()):
            child = f"{path}.{key}" if path else key
            if key not in actual:
                if rule_for(child) is not not_modelled:
                    yield f"{child}: missing from the fake's answer"
            elif key not in expected:
                yield f"{child}: the fake adds {actual[key]!r}"
            else:
                yield from differences(expected[key], actual[key], child)
    elif isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            yield f"{where}: recorded {len(expected)} items, fake {len(actual)}: {actual!r}"
        else:
            for item, other in zip(expected, actual, strict=True):
                yield from differences(item, other, f"{path}[]")
    elif type(expected) is not type(actual) or expected != actual:
        yield f"{where}: recorded {expected!r}, fake {actual!r}"


# -- the world the real server had ---------------------------------------------------------

MODELS = "/srv/lemonade/models"
REV = "5f2a0c1e9d"
QWEN = "Qwen3-0.6B-GGUF"
STANDARD = (
    "broken-arch",
    "tiny-a",
    "tiny-b",
    "tiny-c",
    "tiny-corrupt",
    "tiny-exit",
    "tiny-flaky",
    "tiny-hang",
    "tiny-hangonce",
    "tiny-slow3",
    "truncated",
)
"""The files of ``extra_models_dir`` (``models_list_and_get`` lists them)."""


def local(name: str) -> FakeModel:
    """A ``<models>/NAME.gguf`` file; ``truncated`` has no readable header."""
    window = None if name == "truncated" else 512
    return FakeModel(name, checkpoint=f"{MODELS}/{name}.gguf", max_context_window=window)


def builtin_qwen(name: str, *, downloaded: bool) -> FakeModel:
    """The built-in Qwen3-0.6B-GGUF, its file in the Hugging Face cache when downloaded."""
    return FakeModel(
        name,
        checkpoint="unsloth/Qwen3-0.6B-GGUF:Q4_0",
        model_file=f"{FakeModel.HF_CACHE}/models--unsloth--Qwen3-0.6B-GGUF/snapshots/{REV}/"
        "Qwen3-0.6B-Q4_0.gguf",
        downloaded=downloaded,
        max_context_window=512 if downloaded else None,
        size=None if downloaded else 0.38,
    )


CATALOGS: dict[str, tuple[FakeModel, ...]] = {
    "which_file_is_loaded": (
        local("tiny-c"),
        local(QWEN),
        FakeModel(
            "tiny-dir",
            checkpoint=f"{MODELS}/tiny-dir",
            model_file=f"{MODELS}/tiny-dir/weights.gguf",
        ),
        builtin_qwen(f"builtin.{QWEN}", downloaded=False),
    ),
    "builtin_model_from_hf_cache": (
        *map(local, STANDARD),
        builtin_qwen(QWEN, downloaded=True),
    ),
    "shadowed_builtin_both_loaded": (local(QWEN), builtin_qwen(f"builtin.{QWEN}", downloaded=True)),
    "deleted_model_file": tuple(map(local, ("tiny-a", "tiny-b", "tiny-c"))),
}
"""Scenarios whose server held other models than ``STANDARD`` (their ``setup`` says which)."""


def build_fake(
    scenario: Mapping[str, Any], timing: FakeTiming
) -> tuple[FakeLemonade, dict[str, Hang]]:
    """The fake as the scenario's server was: catalog, limit, key, and faults by file name.

    The recording's llama-server wrapper injected faults by file name (its
    ``environment``); the fake's switches do the same.
    """
    setup = scenario["setup"]
    found = re.search(r"max_loaded_models=(\d+)", setup["server"])
    assert found, setup["server"]
    limit = int(found[1])
    catalog = CATALOGS.get(scenario["name"], tuple(map(local, STANDARD)))
    fake = FakeLemonade(
        catalog,
        max_models=dict.fromkeys(HEALTH_TYPES, limit),
        api_key=setup.get("api_key"),
        timing=timing,
    )
    names = {model.name for model in catalog}
    hangs: dict[str, Hang] = {}
    for name in names & {"broken-arch", "truncated", "tiny-exit"}:
        fake.failing(name)  # llama-server exits at start
    if "tiny-flaky" in names:
        fake.failing("tiny-flaky", retry_succeeds=True)  # only its first start exits
    if "tiny-hang" in names:
        hangs["tiny-hang"] = fake.hanging("tiny-hang")  # never ready
    if "tiny-hangonce" in names:
        hangs["tiny-hangonce"] = fake.hanging("tiny-hangonce", starts=1)
    if "tiny-slow3" in names:
        fake.delaying("tiny-slow3", 3.0 + FakeTiming.REAL.start)  # 3 s, then a real start
    return fake, hangs


def needs_time(scenario: Mapping[str, Any]) -> bool:
    """Whether replaying it means something only with real timings (virtual time)."""
    return any(
        "started_at_s" in step or step.get("response", {}).get("elapsed_s", 0) > 60
        for step in scenario["steps"]
    )


CONNECTION_LEVEL = (
    "live_and_prefixes",
    "api_key",
    "wrong_method",
    "load_invalid_json",
    "load_empty_body",
    "load_missing_or_bad_name",
    "unload_all_variants",
)
"""Scenarios about what goes over the wire: replayed on a loopback socket too."""


# -- normalization: the transcripts' own rules, applied to the fake's answers -------------


def normalize(readings: list[object]) -> list[object]:
    """Apply the file's ``normalization`` rules (1) to (6) across one scenario's readings."""
    pids: dict[int, str] = {}
    uses: set[int] = set()

    def scan(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "pid" and isinstance(item, int):
                    pids.setdefault(item, f"<pid:{len(pids) + 1}>")
                elif key == "last_use" and isinstance(item, int):
                    uses.add(item)
                scan(item)
        elif isinstance(value, list):
            for item in value:
                scan(item)

    for reading in readings:
        scan(reading)
    rank = {use: n for n, use in enumerate(sorted(uses), start=1)}

    def paths(text: str) -> str:
        for real, shown in (
            (FakeLemonade.LLAMA_SERVER, "<llama-server>"),
            (FakeModel.HF_CACHE, "<hf-cache>"),
            (MODELS, "<models>"),
            (REV, "<rev>"),
        ):
            text = text.replace(real, shown)
        return re.sub(r"^(http://127\.0\.0\.1:)\d+(/v1)$", r"\1<port>\2", text)

    def rewrite(value: object, key: str = "") -> object:
        if isinstance(value, dict):
            if value.get("object") == "chat.completion":
                value = chat(value)
            return {k: rewrite(v, k) for k, v in value.items()}
        if isinstance(value, list):
            items = [rewrite(v) for v in value]
            if key == "launch_command" and "--port" in items:
                items[items.index("--port") + 1] = "<port>"
            return items
        if key == "pid" and isinstance(value, int):
            return pids[value]
        if key == "last_use" and isinstance(value, int):
            return rank[value]
        if isinstance(value, str):
            return paths(value)
        return value

    return [rewrite(reading) for reading in readings]


def chat(body: dict[str, Any]) -> dict[str, Any]:
    """Rule (6): a chat completion's id, time, text and timings."""
    body = copy.deepcopy(body)
    body["id"], body["created"] = "<id>", "<created>"
    for choice in body.get("choices", []):
        choice["message"]["content"] = "<text>"
    body["timings"] = dict.fromkeys(body.get("timings", {}), "<timing>")
    return body


# -- replaying -------------------------------------------------------------------------------


@attrs.define
class Seen:
    """What the fake did at one recorded step."""

    index: int
    status: int | None = None
    body: object = None
    health: object = None
    elapsed: float | None = None
    finished_at: float | None = None


class Replay:
    """Replays one scenario against a fake through one client."""

    def __init__(
        self,
        scenario: Mapping[str, Any],
        fake: FakeLemonade,
        hangs: Mapping[str, Hang],
        client: httpx.AsyncClient,
        *,
        timed: bool,
    ) -> None:
        self.scenario = scenario
        self.fake = fake
        self.hangs = hangs
        self.client = client
        self.timed = timed
        key = scenario["setup"].get("api_key")
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.seen: list[Seen] = []

    ACTIONS: tuple[tuple[str, str], ...] = (
        (r"^sleep (?P<seconds>\d+) s( more)?$", "sleep"),
        (
            r"copy (?P<source>\S+)\.gguf to <models>/(?P<name>\S+)\.gguf; "
            r"GET (?P<path>\S+) answered (?P<status>\d+)",
            "copy",
        ),
        (r"delete <models>/(?P<name>\S+)\.gguf$", "delete"),
        (r"GET (?P<path>\S+) answered (?P<status>\d+) ", "look"),
        (r"^SIGKILL the hung llama-server", "kill"),
    )
    """The steps done outside HTTP, by their recorded wording."""

    async def run(self) -> list[Seen]:
        steps = self.scenario["steps"]
        index = 0
        while index < len(steps):
            if "started_at_s" in steps[index]:
                group = [index]
                while index + 1 < len(steps) and "started_at_s" in steps[index + 1]:
                    index += 1
                    group.append(index)
                await self.concurrently(group)
            else:
                await self.step(index)
            index += 1
        return self.seen

    async def concurrently(self, indexes: list[int]) -> None:
        assert self.timed, "concurrent steps are replayed on the virtual clock only"
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for index in indexes:
                at = start + self.scenario["steps"][index]["started_at_s"]
                tg.start_soon(self.step, index, at, start)

    async def step(self, index: int, at: float | None = None, start: float = 0.0) -> None:
        step = self.scenario["steps"][index]
        if at is not None:
            await anyio.sleep_until(at)
        if "action" in step:
            await self.act(step["action"])
            return
        request = step["request"]
        began = anyio.current_time()
        status, body = await self.send(
            request["method"], request["path"], request["headers"], request["body"]
        )
        seen = Seen(index, status, body, elapsed=anyio.current_time() - began)
        if at is not None:
            seen.finished_at = anyio.current_time() - start
        if "health_after" in step:
            seen.health = (await self.send("GET", "/api/v1/health", self.auth, None))[1]
        self.seen.append(seen)

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], body: str | None
    ) -> tuple[int, object]:
        content = body.encode("utf-8") if body is not None else None
        response = await self.client.request(method, path, headers=dict(headers), content=content)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    async def act(self, action: str) -> None:
        for pattern, name in self.ACTIONS:
            found = re.search(pattern, action)
            if found:
                await getattr(self, f"_{name}")(**found.groupdict())
                return
        pytest.fail(f"{self.scenario['name']}: the fake cannot replay the action {action!r}")

    async def _sleep(self, seconds: str) -> None:
        if self.timed:  # otherwise the fake's clock plays no part in what is compared
            await anyio.sleep(float(seconds))

    async def _copy(self, source: str, name: str, path: str, status: str) -> None:
        self.fake.add_model(local(name))
        await self._look(path, status)

    async def _delete(self, name: str) -> None:
        self.fake.delete_file(name)

    async def _look(self, path: str, status: str) -> None:
        answered, _ = await self.send("GET", path, self.auth, None)
        assert answered == int(status), (path, answered)

    async def _kill(self) -> None:
        hung = [hang for hang in self.hangs.values() if hang.hung]
        assert len(hung) == 1, hung
        hung[0].kill()


def compare(scenario: Mapping[str, Any], seen: list[Seen], *, timed: bool) -> list[str]:
    """Every difference between the recorded steps and what the fake did."""
    steps = scenario["steps"]
    readings = normalize([value for s in seen for value in (s.body, s.health)])
    found: list[str] = []
    for n, s in enumerate(seen):
        step = steps[s.index]
        label = f"step {s.index} ({step['request']['method']} {step['request']['path']})"
        response = step["response"]
        body, health = readings[2 * n], readings[2 * n + 1]
        if s.status != response["status"]:
            found.append(f"{label}: status recorded {response['status']}, fake {s.status}")
        found += [f"{label} body: {d}" for d in differences(response["body"], body)]
        if "health_after" in step:
            found += [
                f"{label} health after: {d}" for d in differences(step["health_after"], health)
            ]
        if not timed:
            continue
        assert s.elapsed is not None
        if abs(s.elapsed - response["elapsed_s"]) > TIME_TOLERANCE_S:
            found.append(f"{label}: took {s.elapsed:.2f} s, recorded {response['elapsed_s']} s")
        if "finished_at_s" in step:
            assert s.finished_at is not None
            if abs(s.finished_at - step["finished_at_s"]) > TIME_TOLERANCE_S:
                found.append(
                    f"{label}: finished at {s.finished_at:.2f} s, "
                    f"recorded {step['finished_at_s']} s"
                )
    return found


@asynccontextmanager
async def in_process(fake: FakeLemonade) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        fake,
        httpx.AsyncClient(
            transport=fake.transport(), base_url="http://lemonade", timeout=None
        ) as client,
    ):
        yield client


@asynccontextmanager
async def on_loopback(fake: FakeLemonade) -> AsyncIterator[httpx.AsyncClient]:
    async with fake.serve() as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


Connect = Callable[[FakeLemonade], Any]


async def replay(scenario: Mapping[str, Any], connect: Connect, timing: FakeTiming) -> list[str]:
    fake, hangs = build_fake(scenario, timing)
    timed = timing == FakeTiming.REAL
    async with connect(fake) as client:
        seen = await Replay(scenario, fake, hangs, client, timed=timed).run()
    assert len(seen) == sum(1 for step in scenario["steps"] if "request" in step)
    return compare(scenario, seen, timed=timed)


# -- the tests ------------------------------------------------------------------------------


def test_the_copy_is_the_reference() -> None:
    """The committed transcripts are byte for byte the shared reference, when it is there."""
    if not REFERENCE.exists():
        pytest.skip(f"no shared reference at {REFERENCE}")
    assert DATA.read_bytes() == REFERENCE.read_bytes()


def test_every_scenario_is_replayed_somewhere() -> None:
    assert set(SCENARIOS) == set(TIMED) | set(UNTIMED)
    assert set(CONNECTION_LEVEL) <= set(UNTIMED)
    assert set(CATALOGS) <= set(SCENARIOS)
    assert TRANSCRIPTS["server"] == {"name": "lemond", "version": "11.7.0"}


TIMED = sorted(SCENARIOS)
UNTIMED = sorted(name for name, s in SCENARIOS.items() if not needs_time(s))


@pytest.mark.virtual_time
@pytest.mark.parametrize("name", TIMED)
async def test_scenario_on_virtual_time(name: str) -> None:
    """Answers, ``/health`` and timings, with 11.7.0's timing on the virtual clock."""
    assert await replay(SCENARIOS[name], in_process, FakeTiming.REAL) == []


@pytest.mark.parametrize("name", UNTIMED)
async def test_scenario_in_process(name: str) -> None:
    """Answers and ``/health``, instantly, on both backends."""
    assert await replay(SCENARIOS[name], in_process, FakeTiming.INSTANT) == []


@pytest.mark.parametrize("name", CONNECTION_LEVEL)
async def test_scenario_on_loopback(name: str) -> None:
    """Answers and ``/health`` through a real socket, on both backends."""
    assert await replay(SCENARIOS[name], on_loopback, FakeTiming.INSTANT) == []


# -- the comparison can fail ------------------------------------------------------------


def mutations() -> Iterator[tuple[str, str, Callable[[dict[str, Any]], None]]]:
    """One recorded answer changed, in each kind of place the comparison reads."""

    def status(s: dict[str, Any]) -> None:
        s["steps"][2]["response"]["status"] = 500

    def body(s: dict[str, Any]) -> None:
        s["steps"][2]["response"]["body"]["error"]["requested_model"] = "other"

    def row_field(s: dict[str, Any]) -> None:
        s["steps"][2]["health_after"]["all_models_loaded"][0]["backend_alive"] = False

    def row_type(s: dict[str, Any]) -> None:
        s["steps"][2]["health_after"]["all_models_loaded"][0]["max_context_window"] = "512"

    def same_process(s: dict[str, Any]) -> None:
        s["steps"][2]["health_after"]["all_models_loaded"][1]["pid"] = "<pid:1>"

    def lru_order(s: dict[str, Any]) -> None:
        s["steps"][2]["health_after"]["all_models_loaded"][0]["last_use"] = 3

    def top_level(s: dict[str, Any]) -> None:
        s["steps"][2]["health_after"]["max_models"]["tts"] = 1

    def timing(s: dict[str, Any]) -> None:
        s["steps"][2]["response"]["elapsed_s"] = 2.1

    yield "load_unknown_model", "status", status
    yield "load_unknown_model", "body", body
    yield "load_unknown_model", "row field", row_field
    yield "load_unknown_model", "row type", row_type
    yield "load_unknown_model", "pid", same_process
    yield "load_unknown_model", "last_use", lru_order
    yield "load_unknown_model", "top level", top_level
    yield "load_unknown_model", "timing", timing


@pytest.mark.virtual_time
@pytest.mark.parametrize(
    ("name", "change"),
    [(name, change) for name, _, change in mutations()],
    ids=[what for _, what, _ in mutations()],
)
async def test_a_changed_recording_is_caught(
    name: str, change: Callable[[dict[str, Any]], None]
) -> None:
    scenario = copy.deepcopy(SCENARIOS[name])
    change(scenario)
    assert await replay(scenario, in_process, FakeTiming.REAL) != []
