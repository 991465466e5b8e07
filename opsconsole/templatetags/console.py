"""Presentation helpers for the console's templates: meters, collapsible JSON, the chrome."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from opsconsole.context_processors import console_state as _console_state

register = template.Library()

# Up to this a value is shown on one line.
INLINE_CHARS = 120
# Beyond this a value is folded away behind a <details> summary.
COLLAPSE_CHARS = 240
# Beyond this only the beginning is shown at all (the trace keeps the whole value).
SHOW_CHARS = 20_000

# (usage key, budget key, label) in the order the meters are shown.
BUDGETS = (
    ("steps", "max_steps", "steps"),
    ("tool_calls", "max_tool_calls", "tool calls"),
    ("tokens", "max_tokens", "tokens"),
    ("usd", "max_usd", "USD"),
    ("seconds", "max_seconds", "seconds"),
)


@dataclass(frozen=True)
class Meter:
    name: str
    label: str
    used: float
    limit: float | None
    percent: int
    level: str
    display: str


def _format(name: str, value: float | None) -> str:
    if value is None:
        return "∞"
    if name == "usd":
        return f"{value:.4f}"
    if name == "seconds":
        return f"{value:.0f}"
    return f"{int(value):,}"


def meters_for(usage: dict[str, Any], budgets: dict[str, Any]) -> list[Meter]:
    result = []
    for name, budget_name, label in BUDGETS:
        used = float(usage.get(name) or 0)
        limit = budgets.get(budget_name)
        limit = float(limit) if limit is not None else None
        if limit is None:
            percent, level = 0, "none"
        else:
            # A zero budget is already used up.
            percent = min(100, round(100 * used / limit)) if limit else 100
            level = "bad" if percent >= 100 else "warn" if percent >= 80 else "ok"
        result.append(
            Meter(
                name=name,
                label=label,
                used=used,
                limit=limit,
                percent=percent,
                level=level,
                display=f"{_format(name, used)} / {_format(name, limit)}",
            )
        )
    return result


@register.filter
def run_meters(run) -> list[Meter]:
    """The five budget meters of a run (usage against its effective budgets)."""
    return meters_for(run.usage(), run.budgets())


@register.simple_tag
def minibars(run) -> SafeString:
    """A run's five usage meters as small bars, for a row of a runs table.

    Rendered in Python rather than by a template include: the runs list shows 50 rows of five bars
    each, and the template engine's variable lookups made this the bulk of the page's server time
    (docs/performance.md). The markup is the same the live updates in static/js/live.js patch.
    """
    bars = []
    for m in run_meters(run):
        limit = "" if m.limit is None else escape(m.limit)
        bars.append(
            f'<progress class="minibar level-{m.level}" data-meter="{m.name}" '
            f'data-limit="{limit}" max="100" value="{m.percent}" '
            f'title="{escape(m.label)}: {escape(m.display)}">{m.percent}%</progress>'
        )
    return mark_safe(f'<span class="minibars">{"".join(bars)}</span>')


@register.simple_tag(takes_context=True)
def console_state(context: template.Context):
    """The page chrome's state (role, kill switch, queue size), computed once per request."""
    if "console" in context:
        return context["console"]
    request = context.get("request")
    return _console_state(request) if request is not None else None


@register.simple_tag
def json_block(value: Any, label: str = "value") -> str:
    """A JSON value: short ones on one line, long ones in a <pre>, large ones folded away."""
    compact = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    if len(compact) <= INLINE_CHARS:
        return format_html('<code class="json-inline">{}</code>', compact)
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    size = len(text.encode())
    shown = text
    if len(text) > SHOW_CHARS:
        shown = text[:SHOW_CHARS] + f"\n… (truncated here; {size / 1024:.1f} kB in total)"
    if len(text) <= COLLAPSE_CHARS and text.count("\n") <= 8:
        return format_html('<pre class="json">{}</pre>', shown)
    return format_html(
        '<details class="json"><summary>{} · {}</summary><pre>{}</pre></details>',
        label,
        f"{size / 1024:.1f} kB" if size >= 1024 else f"{size} B",
        shown,
    )


@register.filter
def seconds_until(moment: datetime | None) -> int:
    if moment is None:
        return 0
    return max(0, int((moment - timezone.now()).total_seconds()))


@register.filter
def duration(seconds: float | int | None) -> str:
    """90 -> '1m 30s'; for ages and time left."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    return f"{hours // 24}d {hours % 24}h"


@register.filter
def age(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return duration((timezone.now() - moment).total_seconds())
