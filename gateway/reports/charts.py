"""Bar charts as geometry (pure); the templates draw them as inline SVG.

Server-side SVG with no script, no external asset and no ``style`` attribute (presentation attributes only), so
the report works under a strict Content-Security-Policy and prints as it shows. Labels stay data here: the
template autoescapes them like any other text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 720
BAR_HEIGHT = 18
LABEL_WIDTH = 180
PLOT_HEIGHT = 160
AXIS = 24


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int
    #: Where the label and the value are written.
    label_x: float
    label_y: float
    value_x: float
    value_y: float


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    #: "columns" (one per day, labels under every few) or "rows" (one per name, label on the left).
    shape: str
    maximum: int
    #: Columns whose label is written (every day would not fit).
    labelled: frozenset[int] = frozenset()


def _scale(maximum: int) -> int:
    return max(maximum, 1)


def columns(title: str, points: Sequence[tuple[str, int]]) -> Chart:
    """One column per point (requests per day), labelled every seventh and the last."""
    count = max(len(points), 1)
    step = (WIDTH - 40) / count
    top = _scale(max((v for _, v in points), default=0))
    bars = []
    for index, (label, value) in enumerate(points):
        height = PLOT_HEIGHT * value / top
        x = 40 + index * step
        bars.append(
            Bar(
                x=round(x + step * 0.1, 1),
                y=round(PLOT_HEIGHT - height + 8, 1),
                width=round(step * 0.8, 1),
                height=round(height, 1),
                label=label,
                value=value,
                label_x=round(x + step / 2, 1),
                label_y=PLOT_HEIGHT + 8 + 16,
                value_x=round(x + step / 2, 1),
                value_y=round(PLOT_HEIGHT - height + 4, 1),
            )
        )
    last = len(points) - 1
    # Every seventh day, and the last unless it would overlap the one before it.
    labelled = frozenset(i for i in range(len(points)) if i % 7 == 0 or (i == last and last % 7 > 2))
    return Chart(title, WIDTH, PLOT_HEIGHT + 8 + AXIS, tuple(bars), "columns", top, labelled)


def rows(title: str, points: Sequence[tuple[str, int]]) -> Chart:
    """One horizontal bar per point (downloads per agent, requests per channel), largest first as given."""
    top = _scale(max((v for _, v in points), default=0))
    span = WIDTH - LABEL_WIDTH - 60
    bars = []
    for index, (label, value) in enumerate(points):
        y = 4 + index * (BAR_HEIGHT + 6)
        width = span * value / top
        bars.append(
            Bar(
                x=LABEL_WIDTH,
                y=y,
                width=round(width, 1),
                height=BAR_HEIGHT,
                label=label,
                value=value,
                label_x=LABEL_WIDTH - 6,
                label_y=y + BAR_HEIGHT - 5,
                value_x=round(LABEL_WIDTH + width + 6, 1),
                value_y=y + BAR_HEIGHT - 5,
            )
        )
    height = max(8 + len(points) * (BAR_HEIGHT + 6), 30)
    return Chart(title, WIDTH, height, tuple(bars), "rows", top)
