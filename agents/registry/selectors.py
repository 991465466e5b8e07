"""Reads for the agents pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db.models import Prefetch, Q, Sum
from django.utils import timezone

from agents.models import (
    Agent,
    AgentKey,
    Run,
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
