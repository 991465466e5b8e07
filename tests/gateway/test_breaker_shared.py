"""Breakers do not serialise a tool's decisions: a closed breaker is only read; its row is locked
only to claim a state (an open breaker turning half-open, a half-open one's trial calls)."""

from __future__ import annotations

import pytest
from django.db.models import QuerySet
from django.utils import timezone

from agents.models import BreakerState, ToolBreaker

pytestmark = pytest.mark.django_db


@pytest.fixture
def locked_models(monkeypatch) -> list[type]:
    """The models whose rows a request locked (``select_for_update``), in order."""
    locked: list[type] = []
    original = QuerySet.select_for_update

    def recording(self, *args, **kwargs):
        locked.append(self.model)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(QuerySet, "select_for_update", recording)
    return locked


def call(agent, run_id: int, i: int):
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": "kb.read", "args": {"i": i}}
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_decisions_of_a_tool_with_a_closed_breaker_do_not_lock_its_row(
    agent, start_run, locked_models
):
    ToolBreaker.objects.create(tool="kb.read", state=BreakerState.CLOSED)
    run = start_run()["id"]
    assert [call(agent, run, i)["decision"] for i in range(3)] == ["allow"] * 3
    assert ToolBreaker not in locked_models


def test_a_half_open_breaker_still_claims_each_trial_call_under_its_lock(
    agent, start_run, locked_models, publish_policy
):
    publish_policy(
        """
tools:
  allow: ["kb.read"]
  definitions:
    kb.read:
      breaker: {window: 10, min_calls: 4, failure_rate: 0.5, cooldown_seconds: 30, trial_calls: 1}
"""
    )
    ToolBreaker.objects.create(
        tool="kb.read",
        state=BreakerState.OPEN,
        opened_at=timezone.now() - timezone.timedelta(seconds=60),
    )
    first, second = start_run()["id"], start_run()["id"]
    assert call(agent, first, 1)["decision"] == "allow"  # the one trial call
    assert call(agent, second, 2)["stop_reason"] == "tool_degraded:kb.read"
    assert ToolBreaker in locked_models
    breaker = ToolBreaker.objects.get(tool="kb.read")
    assert (breaker.state, breaker.trial_calls_left) == (BreakerState.HALF_OPEN, 0)
