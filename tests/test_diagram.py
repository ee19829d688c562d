"""Diagrams are generated from the rulebook, and the committed copies never drift."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from slotfsm import SlotState
from slotfsm.cli import main
from slotfsm.diagram import GraphvizMissingError, dot, drawn_rules, event_table, mermaid, svg
from slotfsm.rules import RULES

ROOT = Path(__file__).parents[1]
REGENERATE = "regenerate with: python diagrams/regenerate.py"


@pytest.mark.parametrize(("fmt", "suffix"), [("mermaid", "mmd"), ("dot", "dot")])
def test_committed_diagrams_are_what_the_command_prints(
    fmt: str, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diagram", "--format", fmt]) == 0
    printed = capsys.readouterr().out
    committed = (ROOT / "diagrams" / f"slot-lifecycle.{suffix}").read_text(encoding="utf-8")
    assert printed == committed, f"diagrams/slot-lifecycle.{suffix} drifted; {REGENERATE}"


def test_readme_shows_the_generated_diagram_and_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```mermaid\n(.*?)```", readme, re.S)
    assert block is not None and block.group(1) == mermaid(), (
        f"README's diagram drifted; {REGENERATE}"
    )
    assert event_table() in readme, f"README's event table drifted; {REGENERATE}"


def test_every_state_change_is_an_edge_with_its_guard() -> None:
    text = mermaid()
    for rule in RULES:
        if rule.dest is not None:
            assert f"{rule.source.value} --> {rule.dest.value} : {rule.caption}" in text
    assert "validating --> loading : validated [passed] / CallLoad" in text
    assert "loading --> error : load timeout" in text
    assert "loaded --> unloading : observed [idle expired, not in use] / CallUnload" in text
    # CallLoad appears on exactly one edge: the passed validation.
    assert [r.caption for r in drawn_rules() if "CallLoad" in r.caption] == [
        "validated [passed] / CallLoad"
    ]


def test_error_edges_are_red_in_dot_and_output_is_deterministic() -> None:
    text = dot()
    into_error = [line for line in text.splitlines() if "-> error" in line]
    assert into_error and all('color="#c0392b"' in line for line in into_error)
    assert dot() == text and mermaid() == mermaid()


def test_highlight_marks_the_current_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--format", "mermaid", "--highlight", "loaded"]) == 0
    assert "class loaded current" in capsys.readouterr().out
    assert "loaded [fillcolor=" in dot(SlotState.LOADED)
    assert main(["diagram", "--highlight", "nowhere"]) == 2


def test_svg_needs_graphviz(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("dot"):
        assert "<svg" in svg()
    monkeypatch.setenv("PATH", "")
    with pytest.raises(GraphvizMissingError, match="apt-get install graphviz"):
        svg()


def test_svg_without_graphviz_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "")
    assert main(["diagram", "--format", "svg"]) == 1
    assert "graphviz" in capsys.readouterr().err.lower()


def test_output_file(tmp_path: Path) -> None:
    target = tmp_path / "out.dot"
    assert main(["diagram", "--format", "dot", "--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == dot()
