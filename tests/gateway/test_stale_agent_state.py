"""A pause governs the very next decision, even one whose request authenticated just before it."""

from __future__ import annotations

import pytest

from agents.gateway import services
from agents.models import Agent, Decision
from opsconsole.errors import Conflict

pytestmark = pytest.mark.django_db


def pause_behind_its_back(agent: Agent) -> None:
    """The pause commits after the request read the agent (the row it holds is now stale)."""
    Agent.objects.filter(pk=agent.pk).update(
        enabled=False, paused=True, disabled_by="olivia-oncall", disabled_reason="storm"
    )


def test_a_call_authenticated_before_a_pause_is_stopped_by_it(agent, start_run):
    run = start_run()
    stale = Agent.objects.get(pk=agent.agent.pk)
    pause_behind_its_back(stale)

    call = services.tool_call_decide(agent=stale, run_id=run["id"], tool="kb.read", args={})

    assert (call.decision, call.stop_reason) == (Decision.STOP, "agent_disabled")
    assert "paused by olivia-oncall" in call.detail


def test_a_run_started_by_a_request_authenticated_before_a_pause_is_refused(agent):
    stale = Agent.objects.get(pk=agent.agent.pk)
    pause_behind_its_back(stale)

    with pytest.raises(Conflict) as refused:
        services.run_start(agent=stale, task="one more")

    assert refused.value.extra["stop_reason"] == "agent_disabled"
