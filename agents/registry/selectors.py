"""Reads for the agents pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db.models import Count, Prefetch, Q, Sum
from django.utils import timezone

from agents import stop_reasons
from agents.models import (
    Agent,
    AgentKey,
    Run,
    ToolCall,
)
from opsconsole.errors import NotFound


def agent_admin_list() -> list[Agent]:
    """Agents with their keys (newest first) for the agents admin page."""
    return list(
        Agent.objects.order_by("name").prefetch_related(
            Prefetch("keys", queryset=AgentKey.objects.order_by("-created_at", "-id"))
        )
    )


@dataclass(frozen=True)
class Spend:
    """What an agent's runs started in the last hour and the last day have cost so far."""

    last_hour: Decimal = Decimal("0")
    last_day: Decimal = Decimal("0")


def agent_spend(*, agent_ids: list[int] | None = None) -> dict[int, Spend]:
    """Spend by agent id, in one query over the last day's runs (run_list_idx, or
    run_agent_list_idx for given agents, on PostgreSQL); agents with no such run are absent.

    Runs are counted by when they started, which is what the list indexes can find: a run that
    began more than a day ago and still spends is not counted (runs are bounded by max_seconds).
    All-time totals are left out: they would read every run on every page view.
    """
    now = timezone.now()
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    runs = Run.objects.filter(started_at__gte=day_ago)
    if agent_ids is not None:
        runs = runs.filter(agent_id__in=agent_ids)
    rows = (
        runs.values_list("agent_id")
        .annotate(day=Sum("usd"), hour=Sum("usd", filter=Q(started_at__gte=hour_ago)))
        .order_by()
    )
    return {
        agent_id: Spend(last_hour=hour or Decimal("0"), last_day=day or Decimal("0"))
        for agent_id, day, hour in rows
    }


def agent_admin_list_with_spend() -> list[tuple[Agent, Spend]]:
    """The agents admin page's rows: each agent (with its keys) and its spend (3 queries)."""
    agents = agent_admin_list()
    spend = agent_spend()
    return [(agent, spend.get(agent.pk, Spend())) for agent in agents]


def agent_get(*, name: str) -> Agent:
    agent = Agent.objects.filter(name=name).first()
    if agent is None:
        raise NotFound(f"No agent {name!r}.")
    return agent


def paused_agents() -> list[Agent]:
    """The paused agents, oldest pause first, for the banner on every page (one query)."""
    return list(
        Agent.objects.filter(paused=True)
        .order_by("disabled_at", "name")
        .only("name", "disabled_by", "disabled_reason", "disabled_at", "enabled", "paused")
    )


RATE_MINUTES = 15
RECENT = 10


@dataclass(frozen=True)
class AgentActivity:
    """What on-call reads on an agent's page: how fast it calls, how its runs stopped, and its
    latest runs and calls."""

    calls_per_minute: float
    stop_mix: list[tuple[str, int]]
    recent_runs: list[Run]
    recent_calls: list[ToolCall]


def agent_activity(*, agent: Agent) -> AgentActivity:
    """Four queries, whatever the agent's history. Like ``agent_spend``, it reads the runs the
    agent started in the last day (run_agent_list_idx): a run is bounded by max_seconds, so older
    runs make no calls now."""
    now = timezone.now()
    day_ago = now - timedelta(days=1)
    todays_runs = Run.objects.filter(agent=agent, started_at__gte=day_ago)
    calls = ToolCall.objects.filter(run__in=todays_runs.values("pk"))
    recent_count = calls.filter(created_at__gte=now - timedelta(minutes=RATE_MINUTES)).count()
    mix: dict[str, int] = {}
    for reason, count in (
        todays_runs.exclude(stop_reason="")
        .values_list("stop_reason")
        .annotate(n=Count("id"))
        .order_by()
    ):
        kind = stop_reasons.kind_of(reason)
        mix[kind] = mix.get(kind, 0) + count
    return AgentActivity(
        calls_per_minute=recent_count / RATE_MINUTES,
        stop_mix=sorted(mix.items(), key=lambda item: (-item[1], item[0])),
        recent_runs=list(Run.objects.filter(agent=agent).order_by("-started_at", "-id")[:RECENT]),
        recent_calls=list(
            calls.only(
                "id",
                "run_id",
                "tool",
                "decision",
                "stop_reason",
                "detail",
                "created_at",
                "would_decision",
                "would_stop_reason",
            ).order_by("-created_at", "-id")[:RECENT]
        ),
    )
