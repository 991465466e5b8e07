"""A write waiting for approval when the kill switch turns its tool off never runs."""

from __future__ import annotations

import pytest

from agents.models import Run, ToolCall
from agents.policy.services import kill_switch_set
from approvals.models import ApprovalRequest

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "email.send"]
  definitions:
    email.send: {effect: write}
"""


@pytest.fixture
def pending(agent, start_run, publish_policy):
    publish_policy(POLICY)
    run = start_run()
    answer = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls",
        {"tool": "email.send", "args": {"to": "a@example.com"}},
    ).json()
    assert answer["decision"] == "pending_approval"
    return answer


def test_approving_a_write_the_kill_switch_turned_off_stops_it_instead(pending, reviewer, agent):
    kill_switch_set(mode="disable_writes", reason="vendor incident", actor="user:ada")
    request_id = pending["approval"]["id"]

    response = reviewer.api.post_json(
        f"/api/v1/approvals/{request_id}/decision", {"verdict": "approve"}
    )

    assert response.status_code == 409
    assert response.json()["error"] == "kill_switch"
    assert ApprovalRequest.objects.get(pk=request_id).status == "cancelled"
    call = ToolCall.objects.get(pk=pending["id"])
    assert (call.decision, call.stop_reason) == ("stop", "kill_switch")
    assert Run.objects.get(pk=pending["run"]["id"]).stop_reason == "kill_switch"
    polled = agent.api.get(f"/api/v1/tool-calls/{pending['id']}").json()
    assert polled["decision"] == "stop"


def test_a_mode_that_leaves_the_tool_on_lets_the_approval_through(pending, reviewer, agent):
    kill_switch_set(mode="disable_expensive", reason="vendor incident", actor="user:ada")
    request_id = pending["approval"]["id"]

    response = reviewer.api.post_json(
        f"/api/v1/approvals/{request_id}/decision", {"verdict": "approve"}
    )

    assert response.status_code == 200
    assert agent.api.get(f"/api/v1/tool-calls/{pending['id']}").json()["decision"] == "allow"
