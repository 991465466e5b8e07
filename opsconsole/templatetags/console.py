"""Presentation helpers for the console's templates: meters, collapsible JSON, the chrome."""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import template
from django.conf import settings
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from opsconsole.context_processors import console_state as _console_state

register = template.Library()

# Up to this a value is shown on one line.
INLINE_CHARS = 120
# Beyond this a value is folded away behind a <details> summary.
COLLAPSE_CHARS = 240
# A string longer than this shows its beginning; the rest is folded away and its length said.
VALUE_PREVIEW_CHARS = 200
# Characters of one value put in the page: keys, numbers and beginnings up to this, and as much
# again of folded-away rests. Never less than the arguments' cap (OPSCONSOLE_MAX_ARGS_BYTES), so
# the arguments of any tool call are always shown whole; a larger value (an output) says how much
# of it is left out, and the trace API keeps it whole.
SHOW_CHARS = 65_536
# Deeper levels are not indented further: a 64-deep value would otherwise be mostly spaces.
MAX_INDENT_LEVELS = 12


def _invisible_characters() -> re.Pattern[str]:
    """Characters that are not seen, or that change how the text around them reads: controls
    (C0, DEL, C1; newline and tab excepted), format characters (the bidirectional embeddings,
    overrides, isolates and marks, zero-width spaces and joiners, the byte order mark, tags),
    line and paragraph separators, lone surrogates, and the other default-ignorable code points
    (variation selectors, Hangul fillers). Format characters live only in planes 0, 1 and 14.
    """
    categories = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    planes = (range(0, 0x20000), range(0xE0000, min(0xF0000, sys.maxunicode + 1)))
    points = {
        code for plane in planes for code in plane if unicodedata.category(chr(code)) in categories
    }
    points |= {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0}
    points |= {*range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xFFF0, 0xFFF9)}
    points |= set(range(0xE0000, 0xE1000))
    points -= {ord("\n"), ord("\t")}
    ranges, start, previous = [], None, None
    for code in sorted(points):
        if start is None:
            start = previous = code
        elif code == previous + 1:
            previous = code
        else:
            ranges.append((start, previous))
            start = previous = code
    ranges.append((start, previous))
    return re.compile("[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges) + "]")


_INVISIBLE = _invisible_characters()


def _escape_code_point(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code > 0xFFFF:  # as JSON writes it: a UTF-16 surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


@register.filter
def visible(text: Any) -> str:
    """``text`` with every invisible or direction-changing character written as an escape
    (U+202E as ``\\u202e``), so what a person reads is what an agent sent. Inside JSON text the
    result is still JSON for the same value."""
    if text is None:
        return ""
    return _INVISIBLE.sub(_escape_code_point, str(text))


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


@register.filter
def dollars(amount) -> str:
    """An amount in US dollars as people read it: cents from a dollar up ($427.60), four places
    below one ($0.0125, where calls cost fractions of a cent), and $0 for nothing."""
    if not amount:
        return "$0"
    return f"${amount:,.2f}" if abs(amount) >= 1 else f"${amount:.4f}"


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


@dataclass
class _Budget:
    text: int  # characters of keys, numbers and beginnings still to put in the page
    folded: int  # characters of folded-away rests still to put in the page
    anything_folded: bool = False


def _json_text(text: str) -> str:
    """A piece of a JSON string (no quotes), escaped for HTML, every hidden character visible."""
    return escape(visible(json.dumps(text, ensure_ascii=False)[1:-1]))


def _characters(count: int) -> str:
    return f"{count:,} more character{'s' if count != 1 else ''}"


def _string_html(text: str, budget: _Budget) -> str:
    if len(text) <= VALUE_PREVIEW_CHARS:
        budget.text -= len(text)
        return f"&quot;{_json_text(text)}&quot;"
    head, rest = text[:VALUE_PREVIEW_CHARS], text[VALUE_PREVIEW_CHARS:]
    budget.text -= len(head)
    budget.anything_folded = True
    if len(rest) > budget.folded:
        return (
            f"&quot;{_json_text(head)}"
            f'<span class="json-hidden">… {_characters(len(rest))} not shown here</span>&quot;'
        )
    budget.folded -= len(rest)
    return (
        f"&quot;{_json_text(head)}"
        f'<details class="json-rest"><summary>… {_characters(len(rest))}</summary>'
        f"{_json_text(rest)}&quot;</details>"
    )


def _indent(depth: int) -> str:
    return "\n" + "  " * min(depth, MAX_INDENT_LEVELS)


def _render(value: Any, depth: int, budget: _Budget, out: list[str]) -> None:
    """``value`` as indented JSON into ``out`` (HTML): every key and item, each long string
    folded on its own, so nothing after a long value is ever cut off."""
    if isinstance(value, dict | list | tuple):
        is_dict = isinstance(value, dict)
        opening, closing, unit = ("{", "}", "key") if is_dict else ("[", "]", "item")
        if not value:
            out.append(opening + closing)
            return
        items = (
            sorted(((str(key), item) for key, item in value.items()), key=lambda pair: pair[0])
            if is_dict
            else list(enumerate(value))
        )
        out.append(opening)
        for index, (key, item) in enumerate(items):
            if budget.text <= 0:
                budget.anything_folded = True
                left = len(items) - index
                out.append(
                    f'{_indent(depth + 1)}<span class="json-hidden">… {left:,} more '
                    f"{unit}{'s' if left != 1 else ''} not shown here</span>"
                )
                break
            out.append(_indent(depth + 1))
            if is_dict:
                out.append(_string_html(key, budget) + ": ")
            _render(item, depth + 1, budget, out)
            if index < len(items) - 1:
                out.append(",")
        out.append(_indent(depth) + closing)
    elif isinstance(value, str):
        out.append(_string_html(value, budget))
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
        budget.text -= len(text)
        out.append(escape(text))
    else:  # what json.dumps(default=str) would write: the value as a string
        out.append(_string_html(str(value), budget))


@register.simple_tag
def json_block(value: Any, label: str = "value", open: bool = False) -> SafeString:
    """A JSON value: short ones on one line, longer ones indented, large ones folded away
    (``open`` shows them unfolded). Every key is shown; a long string shows its beginning and
    folds the rest, saying how many characters; hidden characters are written as escapes."""
    compact = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    if len(compact) <= INLINE_CHARS:
        return format_html('<code class="json-inline">{}</code>', visible(compact))
    limit = max(SHOW_CHARS, getattr(settings, "OPSCONSOLE_MAX_ARGS_BYTES", 0))
    budget = _Budget(text=limit, folded=limit)
    out: list[str] = []
    _render(value, 0, budget, out)
    html = "".join(out)
    if len(compact) <= COLLAPSE_CHARS and html.count("\n") <= 8 and not budget.anything_folded:
        return mark_safe(f'<div class="json json-text">{html}</div>')
    size = len(compact.encode(errors="surrogatepass"))
    return mark_safe(
        f'<details class="json"{" open" if open else ""}><summary>{escape(label)} · '
        f"{f'{size / 1024:.1f} kB' if size >= 1024 else f'{size} B'}</summary>"
        f'<div class="json-text">{html}</div></details>'
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
