"""State diagrams drawn from the rulebook itself.

The diagram is generated from :data:`slotfsm.rules.RULES`, the same
declaration the engine runs, so it cannot disagree with the code.  Every rule
that changes the state is an edge labelled ``trigger [guard] / effects``; an
internal rule is drawn as a self-loop when it has a guard or an effect (the
ones that only update bookkeeping are left out).  Edges into ``error`` are
drawn in red.  Output is deterministic: states in declaration order, edges in
rule order.
"""

from __future__ import annotations

import shutil
import subprocess

from slotfsm.errors import ConfigError, GraphvizMissingError
from slotfsm.events import Trigger
from slotfsm.rulebook import Outcome, Rulebook
from slotfsm.rules import POSTPONED, RULES, Rule
from slotfsm.states import SlotState

__all__ = [
    "FORMATS",
    "GraphvizMissingError",
    "dot",
    "drawn_rules",
    "event_table",
    "mermaid",
    "render",
    "svg",
]

FORMATS = ("mermaid", "dot", "svg", "table")


def drawn_rules() -> list[Rule]:
    """The rules a diagram shows, in declaration order."""
    return [rule for rule in RULES if rule.notable]


def _postponed_note() -> str:
    states = [s.value for s in SlotState if any(p[0] is s for p in POSTPONED)]
    return f"load, unload and reset wait while {', '.join(states)}"


def mermaid(highlight: SlotState | None = None) -> str:
    """The lifecycle as a Mermaid ``stateDiagram-v2``."""
    lines = ["stateDiagram-v2", f"    [*] --> {SlotState.IDLE.value}"]
    for rule in drawn_rules():
        dest = rule.dest or rule.source
        lines.append(f"    {rule.source.value} --> {dest.value} : {rule.caption}")
    lines.append(f"    note right of {SlotState.LOADING.value} : {_postponed_note()}")
    lines.append("    classDef failure fill:#fde2e2,stroke:#c0392b,color:#7b1d1d")
    lines.append(f"    class {SlotState.ERROR.value} failure")
    if highlight is not None:
        lines.append("    classDef current fill:#d5f5e3,stroke:#1e8449,stroke-width:3px")
        lines.append(f"    class {SlotState(highlight).value} current")
    return "\n".join(lines) + "\n"


def dot(highlight: SlotState | None = None) -> str:
    """The lifecycle as a Graphviz ``digraph``."""
    lines = [
        "digraph slot_lifecycle {",
        "    rankdir=LR;",
        '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        "    start [shape=point];",
    ]
    for state in SlotState:
        attributes = []
        if state is SlotState.ERROR:
            attributes.append('fillcolor="#fde2e2", color="#c0392b"')
        if highlight is not None and state is SlotState(highlight):
            attributes.append('fillcolor="#d5f5e3", color="#1e8449", penwidth=3')
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"    {state.value}{suffix};")
    lines.append(f"    start -> {SlotState.IDLE.value};")
    for rule in drawn_rules():
        dest = rule.dest or rule.source
        colour = ', color="#c0392b", fontcolor="#c0392b"' if dest is SlotState.ERROR else ""
        lines.append(f'    {rule.source.value} -> {dest.value} [label="{rule.caption}"{colour}];')
    lines.append(f'    note [shape=note, label="{_postponed_note()}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def svg(highlight: SlotState | None = None) -> str:
    """The DOT diagram rendered to SVG by Graphviz (raises if ``dot`` is missing)."""
    program = shutil.which("dot")
    if program is None:
        raise GraphvizMissingError(
            "SVG needs Graphviz's 'dot' program, which is not installed. Install it "
            "('apt-get install graphviz', 'brew install graphviz', 'dnf install graphviz'), "
            "or print DOT with '--format dot' and render it elsewhere."
        )
    done = subprocess.run(
        [program, "-Tsvg"], input=dot(highlight), capture_output=True, text=True, check=True
    )
    return done.stdout


def event_table() -> str:
    """What every event does in every state, as a Markdown table (rows: events).

    A cell names the outcome: ``→ state`` (taken), ``stays`` (taken, the state
    is unchanged), ``waits`` (postponed until the slot settles) or ``—``
    (refused: a stale result for a state already left).  Guards are in brackets.
    """
    book = Rulebook()
    states = list(SlotState)
    lines = [
        "| event | " + " | ".join(s.value for s in states) + " |",
        "|---|" + "---|" * len(states),
    ]
    for trigger in Trigger:
        cells = []
        for state in states:
            outcome = book.outcome(state, trigger)
            if outcome is Outcome.POSTPONED:
                cells.append("waits")
            elif outcome is Outcome.REFUSED:
                cells.append("—")
            else:
                cells.append("; ".join(_cell(rule) for rule in book.rules_for(state, trigger)))
        lines.append(f"| `{trigger.value}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(rule: Rule) -> str:
    where = f"→ {rule.dest.value}" if rule.dest is not None else "stays"
    guard = f" [{rule.label}]" if rule.label else ""
    effects = "".join(f" / {effect.__name__}" for effect in rule.effects)
    return where + guard + effects


def render(fmt: str, highlight: SlotState | None = None) -> str:
    """The diagram in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "mermaid":
        return mermaid(highlight)
    if fmt == "dot":
        return dot(highlight)
    if fmt == "svg":
        return svg(highlight)
    if fmt == "table":
        return event_table()
    raise ConfigError(f"unknown diagram format {fmt!r}; choose one of {', '.join(FORMATS)}")
