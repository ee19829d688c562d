"""Regenerate every generated view of the rulebook: the diagrams here and README's blocks.

Run ``python diagrams/regenerate.py`` after changing ``slotfsm/rules.py``;
``tests/test_diagram.py`` fails until the committed copies match.
"""

from __future__ import annotations

import re
from pathlib import Path

from slotfsm.diagram import dot, event_table, mermaid

ROOT = Path(__file__).resolve().parents[1]
TABLE_START = "<!-- event-table -->\n"
TABLE_END = "<!-- /event-table -->\n"


def main() -> None:
    (ROOT / "diagrams/slot-lifecycle.mmd").write_text(mermaid(), encoding="utf-8")
    (ROOT / "diagrams/slot-lifecycle.dot").write_text(dot(), encoding="utf-8")
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    block = f"```mermaid\n{mermaid()}```"
    text = re.sub(r"```mermaid\n.*?```", lambda _: block, text, count=1, flags=re.S)
    start = text.index(TABLE_START) + len(TABLE_START)
    text = text[:start] + event_table() + text[text.index(TABLE_END) :]
    readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
