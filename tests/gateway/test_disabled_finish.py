"""A disabled agent cannot finish its run as succeeded/ok: the run ends agent_disabled.

The finish answers as a finish on an ended run does (409 with the stop reason), after the run
was stopped with ``agent_disabled`` (issue 12, item 13).
"""

from __future__ import annotations

import pytest

from agents.models import Run, TraceEvent
from agents.policy.services import kill_switch_set
from agents.registry.services import agent_set_enabled
from approvals.models import ApprovalRequest

pytestmark = pytest.mark.django_db


def finish(agent, run_id, **body):
    body.setdefault("status", "succeeded")
    return agent.api.post_json(f"/api/v1/runs/{run_id}/finish", body)


def disable(agent):
    agent_set_enabled(agent=agent.agent, enabled=False, actor="user:ada", reason="misbehaving")


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_a_disabled_agents_finish_stops_the_run_with_agent_disabled(agent, start_run, status):
    run = start_run()
    disable(agent)

    response = finish(agent, run["id"], status=status, answer="done", error="boom")

    assert response.status_code == 409, response.content
    body = response.json()
    assert (body["error"], body["stop_reason"]) == ("run_stopped", "agent_disabled")
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason) == ("stopped", "agent_disabled")
    assert db_run.ended_at is not None
    assert list(
        TraceEvent.objects.filter(run=db_run, kind="stop").values_list("data__stop_reason")
    ) == [("agent_disabled",)]
    assert not TraceEvent.objects.filter(run=db_run, kind="finish").exists()

    again = finish(agent, run["id"])
    assert (again.status_code, again.json()["error"]) == (409, "run_ended")
    assert again.json()["stop_reason"] == "agent_disabled"


def test_it_answers_as_a_step_and_a_tool_call_do(agent, start_run):
    """Every call of a disabled agent gets the same stop reason, the finish included."""
    runs = [start_run() for _ in range(3)]
    disable(agent)
    step = agent.api.post_json(f"/api/v1/runs/{runs[0]['id']}/steps", {}).json()
    call = agent.api.post_json(
        f"/api/v1/runs/{runs[1]['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    ).json()
    finished = finish(agent, runs[2]["id"]).json()
    assert step["stop_reason"] == call["stop_reason"] == finished["stop_reason"] == "agent_disabled"


def test_a_disabled_agents_pending_writes_are_settled(agent, start_run, publish_policy):
    publish_policy({"tools": {"allow": ["email.send"]}, "writes": {"require_approval": True}})
    run = start_run()
    pending = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {"to": "x"}}
    ).json()
    assert pending["decision"] == "pending_approval"
    disable(agent)

    assert finish(agent, run["id"]).status_code == 409

    request = ApprovalRequest.objects.get(pk=pending["approval"]["id"])
    assert request.status == "cancelled"
    polled = agent.api.get(f"/api/v1/tool-calls/{pending['id']}").json()
    assert (polled["decision"], polled["stop_reason"]) == ("stop", "agent_disabled")


def test_stop_all_wins_over_a_finish_as_it_does_over_a_step(agent, start_run):
    """Between the switch and its sweep (queued after commit), a finish is not an ``ok``."""
    run = start_run()
    kill_switch_set(mode="stop_all", reason="incident", actor="user:ada")
    assert Run.objects.get(pk=run["id"]).status == "running"  # not swept yet

    response = finish(agent, run["id"])

    assert (response.status_code, response.json()["stop_reason"]) == (409, "kill_switch")


def test_an_enabled_agent_still_finishes_ok(agent, start_run):
    run = start_run()
    response = finish(agent, run["id"])
    assert (response.status_code, response.json()["stop_reason"]) == (200, "ok")
