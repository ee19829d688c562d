"""``slotfsm demo``: the whole lifecycle against the built-in fake, in a few seconds.

The story runs on a fake Lemonade Server served on a free loopback port, with
small model files written to a temporary directory, short timeouts and a
compressed idle policy.  It uses only the public API, so it doubles as an
example of embedding slotfsm:

1. two slots load sound models;
2. a third slot is asked for a file with a wrong sha256, then a truncated
   one: both fail validation, ``/load`` is never sent for them, and the two
   loaded models stay loaded;
3. a load that hangs on the server times out once, and is not retried; when
   the server finishes it late, the stray model is unloaded;
4. a model left unused goes idle and is unloaded, while one in use stays;
5. a real load failure makes the server evict every model; slotfsm notices
   and reports it on the slots that lost their model.

Every check that fails is reported; the exit status is 0 only when the story
went as designed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import TextIO

import anyio

from slotfsm import (
    Controller,
    PreloadError,
    Registry,
    SlotConfig,
    SlotSnapshot,
    SlotState,
    SlotTransition,
    TransitionStream,
)
from slotfsm.testing import FakeLemonade, FakeModel
from slotfsm.testing.files import Flaw, write_model

__all__ = ["run_demo"]

STEP_TIMEOUT = 10.0
"""No step of the story may take longer than this (seconds)."""


class _Story:
    """Prints as it goes and collects what diverged from the design."""

    def __init__(self, out: TextIO, color: bool) -> None:
        self.out = out
        self.color = color
        self.diverged: list[str] = []
        self.start = 0.0

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def chapter(self, text: str) -> None:
        self.say("")
        self.say(self.paint(f"== {text}", "1"))

    def check(self, ok: bool, what: str) -> None:
        mark = self.paint("ok  ", "32") if ok else self.paint("FAIL", "31")
        self.say(f"   {mark} {what}")
        if not ok:
            self.diverged.append(what)


def _describe(snap: SlotSnapshot) -> str:
    error = f", {snap.error.kind.name}" if snap.error else ""
    return f"{snap.state.value} ({snap.model or '-'}{error})"


async def run_demo(out: TextIO = sys.stdout, *, color: bool = False) -> list[str]:
    """Run the story, printing to ``out``; return what diverged (empty: all went well)."""
    story = _Story(out, color)
    with tempfile.TemporaryDirectory(prefix="slotfsm-demo-") as directory:
        entries = [
            write_model(directory, "chat-model", size=64 * 1024),
            write_model(directory, "code-model", size=64 * 1024),
            write_model(directory, "corrupt-model", flaw=Flaw.SHA256),
            write_model(directory, "truncated-model", flaw=Flaw.TRUNCATED),
            write_model(directory, "slow-model"),
            write_model(directory, "crashing-model"),
        ]
        fake = FakeLemonade(
            [FakeModel.for_file(e.name, e.path) for e in entries], max_models={"llm": -1}
        )
        slots = [
            SlotConfig("chat", load_timeout=2.0, idle_timeout=1.5),
            SlotConfig("code", load_timeout=2.0, idle_timeout=1.5),
            SlotConfig("spare", load_timeout=0.5, idle_timeout=1.5),
        ]
        async with fake.serve() as url:
            story.say(f"fake Lemonade on {url}; model files in {directory}")
            async with Controller(
                lemonade_url=url, registry=Registry(entries), slots=slots, poll_interval=0.25
            ) as ctl:
                story.start = anyio.current_time()
                # Subscribed before the story starts, so the printer sees every
                # transition; closing the stream lets it print what is left and end.
                stream = ctl.transitions()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_print_transitions, stream, story)
                    try:
                        with anyio.fail_after(STEP_TIMEOUT * 6):
                            await _tell(ctl, fake, story)
                    finally:
                        stream.close()
                _summary(ctl, fake, story)
    return story.diverged


async def _print_transitions(stream: TransitionStream[SlotTransition], story: _Story) -> None:
    async for t in stream:
        when = f"{t.at - story.start:7.3f}s"
        arrow = f"{t.source.value} -> {t.dest.value}"
        if t.dest is SlotState.ERROR or t.failure is not None:
            arrow = story.paint(arrow, "31")
        elif t.dest is SlotState.LOADED:
            arrow = story.paint(arrow, "32")
        why = t.reason or t.trigger
        story.say(f"   {story.paint(when, '2')}  {t.slot:<6} {arrow:<24} {why}")


async def _wait_for(
    stream: TransitionStream[SlotTransition], wanted: Callable[[SlotTransition], bool]
) -> bool:
    """Wait (at most STEP_TIMEOUT) for a transition; the watcher's own polls bring it."""
    with anyio.move_on_after(STEP_TIMEOUT):
        async for record in stream:
            if wanted(record):
                return True
    return False


async def _tell(ctl: Controller, fake: FakeLemonade, story: _Story) -> None:
    check = story.check

    story.chapter("1. two slots load sound models")
    for slot, model in (("chat", "chat-model"), ("code", "code-model")):
        snap = await ctl.load(slot, model)
        check(snap.state is SlotState.LOADED and snap.model == model, f"{slot}: {_describe(snap)}")

    story.chapter("2. a third slot asks for broken files: validation refuses, nothing is sent")
    for model, kind in (
        ("corrupt-model", PreloadError.SHA256_MISMATCH),
        ("truncated-model", PreloadError.SIZE_MISMATCH),
    ):
        snap = await ctl.load("spare", model)
        ok = snap.state is SlotState.ERROR and snap.error is not None and snap.error.kind is kind
        check(ok, f"spare: {_describe(snap)}")
        sent = [
            r
            for r in fake.loads()
            if isinstance(r.body, dict) and r.body.get("model_name") == model
        ]
        check(not sent, f"the server received no /load for {model}")
    check(
        fake.loaded_models() == ["chat-model", "code-model"] and fake.evict_all_count == 0,
        f"the other models stay loaded: {fake.loaded_models()}",
    )

    story.chapter("3. a load hangs on the server: one timeout, no retry")
    hang = fake.hanging("slow-model")
    snap = await ctl.load("spare", "slow-model")
    check(
        snap.error is not None and snap.error.kind is PreloadError.LOAD_TIMEOUT,
        f"spare: {_describe(snap)}",
    )
    async with ctl.transitions() as stream:
        hang.off()  # the server finishes the load after we gave up on it
        late = await _wait_for(
            stream, lambda t: t.slot == "spare" and t.reason.startswith("stray gone")
        )
    slow_loads = [r for r in fake.loads() if r.body == {"model_name": "slow-model"}]
    check(len(slow_loads) == 1, f"exactly one /load was sent for slow-model ({len(slow_loads)})")
    check(late, "the model that arrived late was unloaded; the slot still reports its timeout")
    check(ctl.snapshot("spare").state is SlotState.ERROR, "spare stays in error until told")

    story.chapter("4. idle models go away; a model in use stays")
    async with ctl.transitions() as stream, ctl.in_use("chat"):
        gone = await _wait_for(stream, lambda t: t.slot == "code" and t.dest is SlotState.IDLE)
        check(
            gone and "code-model" not in fake.loaded_models(),
            "code-model was unused for 1.5 s and was unloaded via /unload",
        )
        check(
            ctl.snapshot("code").state is SlotState.IDLE, f"code: {_describe(ctl.snapshot('code'))}"
        )
        check(
            ctl.snapshot("chat").state is SlotState.LOADED, "chat, in use all along, stays loaded"
        )

    story.chapter("5. a real load failure: the server evicts everything, slotfsm notices")
    await ctl.reset("spare")
    fake.failing("crashing-model", "llama-server failed to start")
    snap = await ctl.load("spare", "crashing-model")
    check(
        snap.error is not None and snap.error.kind is PreloadError.LOAD_FAILED,
        f"spare: {_describe(snap)}",
    )
    chat = ctl.snapshot("chat")
    check(fake.evict_all_count == 1, "the server evicted every model (its evict-all)")
    check(
        chat.state is SlotState.IDLE
        and chat.error is not None
        and chat.error.kind is PreloadError.EVICTED,
        f"chat reports it: {_describe(chat)}",
    )


def _summary(ctl: Controller, fake: FakeLemonade, story: _Story) -> None:
    story.chapter("slots")
    story.say(f"   {'slot':<6} {'state':<10} {'model':<16} last failure")
    for name, snap in ctl.snapshots().items():
        error = f"{snap.error.kind.name}: {snap.error.message}" if snap.error else "-"
        story.say(f"   {name:<6} {snap.state.value:<10} {snap.model or '-':<16} {error}")
    story.chapter("what the server received")
    per_route = Counter(f"{r.method} {r.route}" for r in fake.requests)
    for route, count in sorted(per_route.items()):
        story.say(f"   {route:<12} {count}")
    loads = Counter(r.body.get("model_name") for r in fake.loads() if isinstance(r.body, dict))
    story.say("   /load per model: " + ", ".join(f"{m}={n}" for m, n in sorted(loads.items())))
    story.say(f"   evict-all events: {fake.evict_all_count}")
    story.say("")
    if story.diverged:
        story.say(story.paint(f"{len(story.diverged)} check(s) diverged:", "31"))
        for what in story.diverged:
            story.say(f"   - {what}")
    else:
        story.say(story.paint("the story went as designed", "32"))


def use_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set."""
    return stream.isatty() and "NO_COLOR" not in os.environ
