"""Server-side SVG charts: no script, readable without colour (every bar and point carries its value).

Each chart is an `<svg role="img">` with a `<title>` and `<desc>`, text labels on every bar,
and is meant to sit next to (or above) a table of the same numbers. Every label is escaped here;
the result is the only Markup the console builds outside its templates.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["bar_chart", "column_chart"]

_WIDTH = 720
_ROW = 24
_LABEL = 200
_VALUE = 110


def _fmt(value: float, unit: str) -> str:
    if value == 1 and unit.endswith("s"):
        unit = unit[:-1]
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def _summary(items: Sequence[tuple[str, float]], unit: str) -> str:
    return str(escape(", ".join(f"{label}: {_fmt(v, unit)}" for label, v in items) or "no data"))


def bar_chart(items: Sequence[tuple[str, float]], *, title: str, unit: str = "") -> Markup:
    """Horizontal bars, one row per item (label, bar, value as text), largest scale first."""
    rows = list(items)
    height = _ROW * max(len(rows), 1) + 30
    top = max((v for _, v in rows), default=0.0) or 1.0
    span = _WIDTH - _LABEL - _VALUE
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f"<desc>{_summary(rows, unit)}</desc>",
    ]
    if not rows:
        parts.append(f'<text x="10" y="20">{escape("No data in this period.")}</text>')
    for index, (label, value) in enumerate(rows):
        y = 10 + index * _ROW
        width = max(1.0, span * (value / top)) if value > 0 else 0.0
        shown = label if len(label) <= 30 else label[:29] + "…"
        parts.append(f'<text x="{_LABEL - 8}" y="{y + 15}" text-anchor="end">{escape(shown)}</text>')
        parts.append(f'<rect class="bar" x="{_LABEL}" y="{y + 3}" width="{width:.1f}" height="{_ROW - 8}"/>')
        parts.append(f'<text x="{_LABEL + width + 6:.1f}" y="{y + 15}">{escape(_fmt(value, unit))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def column_chart(points: Sequence[tuple[str, float]], *, title: str, unit: str = "") -> Markup:
    """Vertical columns over time (label under each, value above each); for per-minute or per-day series."""
    cols = list(points)
    height, base, left = 220, 180, 50
    top = max((v for _, v in cols), default=0.0) or 1.0
    step = (_WIDTH - left - 10) / max(len(cols), 1)
    every = max(1, len(cols) // 12)  # at most ~12 axis labels
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f"<desc>{_summary(cols, unit)}</desc>",
        f'<line class="axis" x1="{left}" y1="{base}" x2="{_WIDTH - 10}" y2="{base}"/>',
        f'<text x="{left - 6}" y="{base - 150 + 4}" text-anchor="end">{escape(_fmt(top, ""))}</text>',
        f'<line class="grid-line" x1="{left}" y1="{base - 150}" x2="{_WIDTH - 10}" y2="{base - 150}"/>',
        f'<text x="{left - 6}" y="{base + 4}" text-anchor="end">0</text>',
    ]
    if not cols:
        parts.append(f'<text x="{left + 10}" y="{base - 60}">{escape("No data in this period.")}</text>')
    for index, (label, value) in enumerate(cols):
        x = left + index * step
        bar = 150 * (value / top) if value > 0 else 0.0
        width = max(1.0, step * 0.7)
        parts.append(
            f'<rect class="bar" x="{x + step * 0.15:.1f}" y="{base - bar:.1f}" width="{width:.1f}" '
            f'height="{bar:.1f}"><title>{escape(f"{label}: {_fmt(value, unit)}")}</title></rect>'
        )
        if value > 0 and len(cols) <= 31:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{base - bar - 4:.1f}" text-anchor="middle">'
                f"{escape(_fmt(value, ''))}</text>"
            )
        if index % every == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{base + 16}" text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
