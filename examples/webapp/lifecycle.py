"""The slot lifecycle as a plain SVG, drawn from slotfsm's own rule table.

No JavaScript library and no Graphviz: the six states sit at fixed places,
and every change of state the rules declare (:func:`slotfsm.diagram.drawn_rules`)
is an arrow carrying its triggers (hover an arrow for the full captions:
guards and effects).  Each state is a ``<g class="state" data-state="...">``
and each arrow a ``<g class="edge" data-source="..." data-dest="...">``, so
the page highlights the current state and labels the ways out of it by
toggling classes.
"""

from __future__ import annotations

import math
from html import escape

from slotfsm.diagram import drawn_rules
from slotfsm.states import SlotState

__all__ = ["lifecycle_svg"]

WIDTH, HEIGHT = 760, 300
BOX_W, BOX_H = 112, 38
PLACES: dict[SlotState, tuple[float, float]] = {
    SlotState.IDLE: (70, 150),
    SlotState.VALIDATING: (270, 55),
    SlotState.LOADING: (490, 55),
    SlotState.LOADED: (690, 150),
    SlotState.UNLOADING: (490, 245),
    SlotState.ERROR: (270, 245),
}
LABEL_AT = 0.4
"""Where along its arrow a label sits, from the source (0) to the destination (1)."""
SPREAD = 7.0
"""How far apart (px) the two arrows of a pair of states that lead to each other are drawn."""


def _edge_end(cx: float, cy: float, dx: float, dy: float) -> tuple[float, float]:
    """Where the ray from a box's centre along (dx, dy) leaves the box."""
    t = min(
        (BOX_W / 2) / abs(dx) if dx else math.inf,
        (BOX_H / 2) / abs(dy) if dy else math.inf,
    )
    return cx + dx * t, cy + dy * t


def lifecycle_svg() -> str:
    """The diagram, as an ``<svg id="lifecycle">`` element to embed in a page."""
    edges: dict[tuple[SlotState, SlotState], list[str]] = {}
    for rule in drawn_rules():
        if rule.dest is not None and rule.dest is not rule.source:
            edges.setdefault((rule.source, rule.dest), []).append(rule.caption)
    parts = [
        f'<svg id="lifecycle" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}"'
        ' role="img" aria-label="slot lifecycle">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"'
        ' markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>'
        "</defs>",
    ]
    for (source, dest), captions in edges.items():
        (x1, y1), (x2, y2) = PLACES[source], PLACES[dest]
        length = math.hypot(x2 - x1, y2 - y1)
        ux, uy = (x2 - x1) / length, (y2 - y1) / length
        shift = SPREAD if (dest, source) in edges else 0.0  # right of the direction of travel
        ox, oy = -uy * shift, ux * shift
        sx, sy = _edge_end(x1, y1, ux, uy)
        ex, ey = _edge_end(x2, y2, -ux, -uy)
        triggers = sorted({caption.split(" [")[0].split(" /")[0] for caption in captions})
        into_error = " into-error" if dest is SlotState.ERROR else ""
        # The label sits nearer the source, so that the labels of the ways out of a state
        # stay apart, beside the arrow.
        lx, ly = sx + (ex - sx) * LABEL_AT - uy * 9, sy + (ey - sy) * LABEL_AT + ux * 9
        parts.append(
            f'<g class="edge{into_error}" data-source="{source.value}" data-dest="{dest.value}">'
            f"<title>{escape(chr(10).join(captions))}</title>"
            f'<line x1="{sx + ox:.1f}" y1="{sy + oy:.1f}" x2="{ex + ox:.1f}" y2="{ey + oy:.1f}"'
            ' marker-end="url(#arrow)"/>'
            f'<text x="{lx:.1f}" y="{ly + 4:.1f}">{escape(", ".join(triggers))}</text></g>'
        )
    for state, (x, y) in PLACES.items():
        parts.append(
            f'<g class="state" data-state="{state.value}">'
            f'<rect x="{x - BOX_W / 2:.0f}" y="{y - BOX_H / 2:.0f}" width="{BOX_W}"'
            f' height="{BOX_H}" rx="9"/>'
            f'<text x="{x:.0f}" y="{y + 5:.0f}">{state.value}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
