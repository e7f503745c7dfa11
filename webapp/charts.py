"""Stacked bar charts drawn on the server as inline SVG: no JavaScript, nothing from a CDN.

The SVG holds only shapes. It stretches to the width of its box (``preserveAspectRatio="none"``),
so it fits a phone and a wide screen alike, and every piece of text around it (the scale, the
first and last labels, the legend) is HTML beside it, readable at any width. Colours come
from CSS classes (``series-N``), so the stylesheet's dark mode applies. Each segment is a
link with a ``<title>`` naming what it counts, so a keyboard or a screen reader reaches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# The chart's own coordinates: each column is COLUMN wide, bars BAR wide, HEIGHT tall.
COLUMN = 10
BAR = 8
HEIGHT = 100
# Fewer columns than this still draw as narrow bars rather than one bar filling the width.
MIN_COLUMNS = 12


@dataclass(frozen=True)
class Series:
    """One stacked series (a model): its name and the CSS class that colours it."""

    name: str
    css_class: str


@dataclass(frozen=True)
class Column:
    """One bar: its label, where the whole bar links, and one value and link per series."""

    label: str
    href: str | None
    values: tuple[int, ...]
    hrefs: tuple[str | None, ...]

    @property
    def total(self) -> int:
        return sum(self.values)


def nice_ceiling(value: int) -> int:
    """Return the smallest whole 1, 2, 2.5 or 5 times a power of ten that is at least ``value`` (at least 1)."""
    magnitude = 1
    while True:
        for tenths in (10, 20, 25, 50):
            candidate, remainder = divmod(tenths * magnitude, 10)
            if not remainder and candidate >= value:
                return candidate
        magnitude *= 10


def format_count(value: int) -> str:
    """Return a count written in full with thousands separators: ``1,234,567``."""
    return f"{value:,}"


def stacked_bars(*, chart_id: str, title: str, series: Sequence[Series], columns: Sequence[Column], top: int) -> Markup:
    """Return the SVG of ``columns`` as stacked bars scaled so that ``top`` reaches the top.

    ``chart_id`` prefixes the ids inside; ``title`` names the chart for assistive technology.
    """
    width = max(len(columns), MIN_COLUMNS) * COLUMN
    top = max(top, 1)
    parts = [
        f'<svg class="chart-bars" id="{escape(chart_id)}" viewBox="0 0 {width} {HEIGHT}" preserveAspectRatio="none" '
        f'role="group" aria-labelledby="{escape(chart_id)}-title" focusable="false" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
    ]
    for fraction in (0, 0.5, 1):
        y = _number(HEIGHT * fraction)
        parts.append(f'<line class="chart-grid" x1="0" x2="{width}" y1="{y}" y2="{y}" vector-effect="non-scaling-stroke"/>')
    for index, column in enumerate(columns):
        x = index * COLUMN + (COLUMN - BAR) / 2
        if column.href:
            parts.append(
                f'<a href="{escape(column.href)}" class="chart-column" tabindex="-1" aria-hidden="true">'
                f'<rect class="chart-hit" x="{_number(index * COLUMN)}" y="0" width="{COLUMN}" height="{HEIGHT}"/></a>'
            )
        base = float(HEIGHT)
        for kind, value, href in zip(series, column.values, column.hrefs):
            if value <= 0:
                continue
            height = HEIGHT * value / top
            base -= height
            label = f"{column.label}, {kind.name}: {format_count(value)}"
            rect = (
                f'<rect class="{escape(kind.css_class)}" x="{_number(x)}" y="{_number(base)}" width="{BAR}" '
                f'height="{_number(height)}"><title>{escape(label)}</title></rect>'
            )
            parts.append(f'<a href="{escape(href)}" aria-label="{escape(label)}">{rect}</a>' if href else rect)
    parts.append("</svg>")
    return Markup("".join(parts))


def _number(value: float) -> str:
    """Return a coordinate short and exact enough: at most three decimals, no trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".")
