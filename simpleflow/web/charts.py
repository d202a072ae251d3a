"""Charts drawn on the server as SVG: no JavaScript charting library in the page."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from markupsafe import Markup, escape

from simpleflow.admin import FinishedCount

WIDTH, HEIGHT = 720, 180
LEFT, BOTTOM, TOP = 36, 22, 10
COLORS = {"succeeded": "#2e7d32", "failed": "#c62828"}


def per_minute(counts: Sequence[FinishedCount], now: datetime, minutes: int = 60) -> list[tuple[datetime, int, int]]:
    """(minute, succeeded, failed) for each of the last ``minutes`` minutes, oldest first."""
    end = now.replace(second=0, microsecond=0)
    slots = [end - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
    by_minute = {m: [0, 0] for m in slots}
    for c in counts:
        if c.minute in by_minute and c.status in ("succeeded", "failed"):
            by_minute[c.minute][0 if c.status == "succeeded" else 1] += c.count
    return [(m, ok, bad) for m, (ok, bad) in by_minute.items()]


def throughput_svg(series: Sequence[tuple[datetime, int, int]]) -> Markup:
    """Stacked bars per minute (succeeded below, failed on top) with a y axis and time labels."""
    peak = max((ok + bad for _, ok, bad in series), default=0)
    scale_max = max(peak, 1)
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    bar_w = plot_w / max(len(series), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="runs finished per minute over the last hour, peak {peak}" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 4}" y2="{TOP + plot_h}" stroke="#888"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end" font-size="10" fill="#555">{scale_max}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" font-size="10" fill="#555">0</text>',
    ]
    for i, (minute, ok, bad) in enumerate(series):
        x = LEFT + i * bar_w
        y = float(TOP + plot_h)
        for value, status in ((ok, "succeeded"), (bad, "failed")):
            if value:
                h = plot_h * value / scale_max
                y -= h
                parts.append(
                    f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                    f'fill="{COLORS[status]}"><title>{escape(minute.strftime("%H:%M"))} UTC: {value} {status}'
                    "</title></rect>"
                )
        last = i == len(series) - 1
        if i % 10 == 0 or last:
            anchor, at = ("end", x + bar_w) if last else ("middle", x + bar_w / 2)
            parts.append(
                f'<text x="{at:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" font-size="10" fill="#555">'
                f"{escape(minute.strftime('%H:%M'))}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
