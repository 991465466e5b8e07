"""Reads of the tool page and of the degraded-tools banner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from agents.models import BreakerState, ToolBreaker, ToolCall
from agents.policy.document import ToolRule
from agents.policy.selectors import policy_current

RATE_WINDOW = timedelta(minutes=15)
RECENT_CALLS = 25
ZERO = Decimal("0")


@dataclass(frozen=True)
class ToolStats:
    calls_15m: int
    calls_hour: int
    calls_day: int
    usd_hour: Decimal
    usd_day: Decimal

    @property
    def per_minute(self) -> Decimal:
        minutes = int(RATE_WINDOW.total_seconds() // 60)
        return (Decimal(self.calls_15m) / minutes).quantize(Decimal("0.1"))


@dataclass(frozen=True)
class ToolPage:
    tool: str
    policy_version: int
    allowed: bool
    rule: ToolRule
    stats: ToolStats
    stop_mix: list[tuple[str, int]]
    recent_calls: list[ToolCall]
    breaker: ToolBreaker | None
    forced: bool
    # When the breaker next lets a call through (None: it lets calls through now).
    next_trial_at: datetime | None
    now: datetime


def tool_stats(*, tool: str, now: datetime) -> ToolStats:
    """Counts and spend (cost_usd + reported result_usd) of the tool's calls, in one query."""
    hour, quarter = now - timedelta(hours=1), now - RATE_WINDOW
    spend = Coalesce(Sum("cost_usd"), ZERO) + Coalesce(Sum("result_usd"), ZERO)
    hour_spend = Coalesce(Sum("cost_usd", filter=Q(created_at__gte=hour)), ZERO) + Coalesce(
        Sum("result_usd", filter=Q(created_at__gte=hour)), ZERO
    )
    row = ToolCall.objects.filter(tool=tool, created_at__gte=now - timedelta(days=1)).aggregate(
        calls_15m=Count("id", filter=Q(created_at__gte=quarter)),
        calls_hour=Count("id", filter=Q(created_at__gte=hour)),
        calls_day=Count("id"),
        usd_hour=hour_spend,
        usd_day=spend,
    )
    return ToolStats(
        calls_15m=row["calls_15m"],
        calls_hour=row["calls_hour"],
        calls_day=row["calls_day"],
        usd_hour=Decimal(row["usd_hour"]),
        usd_day=Decimal(row["usd_day"]),
    )


def tool_stop_mix(*, tool: str, now: datetime) -> list[tuple[str, int]]:
    """The stop reasons of the tool's calls in the last day, most frequent first."""
    rows = (
        ToolCall.objects.filter(tool=tool, created_at__gte=now - timedelta(days=1))
        .exclude(stop_reason="")
        .values("stop_reason")
        .annotate(calls=Count("id"))
        .order_by("-calls", "stop_reason")
    )
    return [(row["stop_reason"], row["calls"]) for row in rows]


def tool_recent_calls(*, tool: str, limit: int = RECENT_CALLS) -> list[ToolCall]:
    calls = (
        ToolCall.objects.filter(tool=tool)
        .select_related("run__agent")
        .defer("args", "output", "validation_errors")
        .order_by("-created_at", "-id")
    )
    return list(calls[:limit])


def breaker_next_trial_at(breaker: ToolBreaker | None, rule: ToolRule, now: datetime):
    """When the breaker lets a (trial) call through again; None if it does now."""
    if breaker is None:
        return None
    if breaker.forced_at(now):
        return breaker.forced_until
    if breaker.state == BreakerState.OPEN and breaker.opened_at is not None:
        trial_at = breaker.opened_at + timedelta(seconds=rule.breaker["cooldown_seconds"])
        return trial_at if trial_at > now else None
    return None


def tool_page(*, tool: str) -> ToolPage:
    now = timezone.now()
    policy = policy_current()
    rule = policy.tool_rule(tool)
    breaker = ToolBreaker.objects.filter(tool=tool).first()
    return ToolPage(
        tool=tool,
        policy_version=policy.version,
        allowed=tool in policy.document["tools"]["allow"],
        rule=rule,
        stats=tool_stats(tool=tool, now=now),
        stop_mix=tool_stop_mix(tool=tool, now=now),
        recent_calls=tool_recent_calls(tool=tool),
        breaker=breaker,
        forced=breaker is not None and breaker.forced_at(now),
        next_trial_at=breaker_next_trial_at(breaker, rule, now),
        now=now,
    )


def degraded_tools() -> list[ToolBreaker]:
    """The tools a person degraded and whose time is not up (the banner on every page)."""
    return list(
        ToolBreaker.objects.filter(forced_until__gt=timezone.now())
        .only("tool", "forced_until", "forced_reason", "forced_by")
        .order_by("forced_until", "tool")
    )
