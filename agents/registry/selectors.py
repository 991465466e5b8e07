"""Reads for the agents pages."""

from __future__ import annotations

from django.db.models import Prefetch

from agents.models import (
    Agent,
    AgentKey,
)
from opsconsole.errors import NotFound


def agent_admin_list() -> list[Agent]:
    """Agents with their keys (newest first) for the agents admin page."""
    return list(
        Agent.objects.order_by("name").prefetch_related(
            Prefetch("keys", queryset=AgentKey.objects.order_by("-created_at", "-id"))
        )
    )


def agent_get(*, name: str) -> Agent:
    agent = Agent.objects.filter(name=name).first()
    if agent is None:
        raise NotFound(f"No agent {name!r}.")
    return agent
