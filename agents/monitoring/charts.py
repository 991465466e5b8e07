"""Charts drawn on the server as inline SVG (no JavaScript, no CDN, no style attributes).

Colours come from classes styled in static/css/monitoring.css, so a strict
Content-Security-Policy needs no exception. Every chart also has a <title> and the page shows
the numbers in a table, for people who do not read charts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 720, 240
# Room for the axis labels, drawn at 16 units (static/css/monitoring.css .axis) so they stay
# readable when the chart is scaled down to half a page.
LEFT, RIGHT, TOP, BOTTOM = 60, 24, 14, 36
LABEL_BASELINE = HEIGHT - 10
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per bucket; None is a gap
    css: str  # e.g. "s0 p95": colour and dash come from the stylesheet


def nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _x(index: int, count: int) -> float:
    if count <= 1:
        return LEFT + PLOT_W / 2
    return LEFT + index * PLOT_W / (count - 1)


def _frame(
    title: str, top: float, buckets: Sequence[datetime], label_format: str, body: str
) -> SafeString:
    grid = []
    for step in range(5):
        value = top * step / 4
        y = TOP + PLOT_H - PLOT_H * step / 4
        grid.append(
            format_html(
                '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
                '<text class="axis" x="{}" y="{}" text-anchor="end">{}</text>',
                LEFT,
                WIDTH - RIGHT,
                f"{y:.1f}",
                f"{y:.1f}",
                LEFT - 6,
                f"{y + 5:.1f}",
                _number(value),
            )
        )
    count = len(buckets)
    every = max(1, math.ceil(count / 8))
    labels = [
        format_html(
            '<text class="axis" x="{}" y="{}" text-anchor="middle">{}</text>',
            f"{_x(index, count):.1f}",
            LABEL_BASELINE,
            moment.strftime(label_format),
        )
        for index, moment in enumerate(buckets)
        if index % every == 0
    ]
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}"><title>{}</title>{}{}{}</svg>',
        WIDTH,
        HEIGHT,
        title,
        title,
        mark_safe("".join(grid)),
        mark_safe("".join(labels)),
        body,
    )


def line_chart(
    *, title: str, buckets: Sequence[datetime], series: Sequence[Series], label_format: str
) -> SafeString:
    """Lines over buckets; a None value breaks its line (no data is not zero)."""
    present = [v for s in series for v in s.values if v is not None]
    top = nice_max(max(present, default=0.0))
    count = len(buckets)
    paths = []
    for line in series:
        segments: list[list[str]] = [[]]
        for index, value in enumerate(line.values):
            if value is None:
                segments.append([])
                continue
            y = TOP + PLOT_H - PLOT_H * value / top
            segments[-1].append(f"{_x(index, count):.1f},{y:.1f}")
        for points in segments:
            if len(points) == 1:
                x, y = points[0].split(",")
                paths.append(
                    format_html('<circle class="{}" cx="{}" cy="{}" r="2.5"/>', line.css, x, y)
                )
            elif points:
                paths.append(
                    format_html(
                        '<polyline class="{}" points="{}"><title>{}</title></polyline>',
                        line.css,
                        " ".join(points),
                        line.name,
                    )
                )
    return _frame(title, top, buckets, label_format, mark_safe("".join(paths)))


def stacked_bars(
    *,
    title: str,
    buckets: Sequence[datetime],
    stacks: Sequence[dict[str, int]],
    order: Sequence[str],
    label_format: str,
) -> SafeString:
    """One bar per bucket, stacked by key in ``order`` (classes ``sr-<key>``)."""
    top = nice_max(max((sum(stack.values()) for stack in stacks), default=0))
    count = len(buckets)
    slot = PLOT_W / max(count, 1)
    width = max(1.0, slot * 0.7)
    rects = []
    for index, stack in enumerate(stacks):
        x = LEFT + index * slot + (slot - width) / 2
        base = TOP + PLOT_H
        for key in order:
            value = stack.get(key, 0)
            if not value:
                continue
            height = PLOT_H * value / top
            base -= height
            rects.append(
                format_html(
                    '<rect class="sr-{}" x="{}" y="{}" width="{}" height="{}"><title>{}: {} ({})</title></rect>',
                    key,
                    f"{x:.1f}",
                    f"{base:.1f}",
                    f"{width:.1f}",
                    f"{height:.1f}",
                    key,
                    value,
                    buckets[index].strftime(label_format),
                )
            )
    # Bars sit in slots, not on points: shift the labels to the slot centres.
    body = format_html_join("", "{}", ((rect,) for rect in rects))
    frame = _frame(title, top, [], label_format, body)
    labels = "".join(
        format_html(
            '<text class="axis" x="{}" y="{}" text-anchor="middle">{}</text>',
            f"{LEFT + (index + 0.5) * slot:.1f}",
            LABEL_BASELINE,
            moment.strftime(label_format),
        )
        for index, moment in enumerate(buckets)
        if index % max(1, math.ceil(count / 8)) == 0
    )
    return mark_safe(frame.replace("</svg>", labels + "</svg>"))


SPARK_WIDTH, SPARK_HEIGHT = 120, 24


def sparkline(values: Sequence[float], *, title: str) -> SafeString:
    """A small trend line for a table cell, oldest value first, scaled to its own maximum (a
    flat line on the floor is no activity). The ``title`` says what it shows, with the numbers."""
    top = max(values, default=0) or 1
    count = len(values)
    step = (SPARK_WIDTH - 2) / max(count - 1, 1)
    points = " ".join(
        f"{1 + index * step:.1f},{SPARK_HEIGHT - 1 - (SPARK_HEIGHT - 2) * value / top:.1f}"
        for index, value in enumerate(values)
    )
    return format_html(
        '<svg class="sparkline" viewBox="0 0 {} {}" width="{}" height="{}" role="img"'
        ' aria-label="{}"><title>{}</title><polyline class="spark" points="{}"/></svg>',
        SPARK_WIDTH,
        SPARK_HEIGHT,
        SPARK_WIDTH,
        SPARK_HEIGHT,
        title,
        title,
        points,
    )
