"""``refusals`` in the policy governs the HTTP gateway's answer too: a denial or invalid
arguments refuse that call only (decision ``refused``) when the policy says ``refuse_call``;
the default keeps the old answer (the run stops)."""

from __future__ import annotations

import pytest

from agents.models import Decision, Run, RunStatus, ToolCall
from tests.mcp.conftest import publish

BASE = """
tools:
  allow: ["search.read", "kb.read"]
  definitions:
    kb.read:
      args_schema: {type: object, required: [id], properties: {id: {type: string}}}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}
"""


def start(agent) -> int:
    response = agent.api.post_json("/api/v1/runs", {"task": "answer a ticket"})
    assert response.status_code == 201, response.content
    return response.json()["id"]


def call(agent, run_id: int, tool: str, args: dict | None = None) -> dict:
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args or {}}
    )
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.django_db
def test_by_default_a_denied_tool_still_stops_the_run(agent):
    publish(BASE)
    run_id = start(agent)
    answer = call(agent, run_id, "email.send")
    assert (answer["decision"], answer["stop_reason"]) == ("stop", "tool_denied:email.send")
    assert Run.objects.get(pk=run_id).status == RunStatus.STOPPED


@pytest.mark.django_db
def test_refuse_call_refuses_only_that_call_and_the_run_goes_on(agent):
    publish(BASE + "refusals: {on_refusal: refuse_call, max_refusals: 2}\n")
    run_id = start(agent)
    denied = call(agent, run_id, "email.send")
    invalid = call(agent, run_id, "kb.read", {"id": 7})
    allowed = call(agent, run_id, "search.read", {"q": "refunds"})
    assert (denied["decision"], denied["stop_reason"]) == ("refused", "tool_denied:email.send")
    assert (invalid["decision"], invalid["stop_reason"]) == ("refused", "invalid_tool_args:kb.read")
    assert denied["run"]["status"] == "running"
    assert allowed["decision"] == "allow"
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.tool_calls) == (RunStatus.RUNNING, 1)  # refusals are not counted
    assert ToolCall.objects.filter(run=run, decision=Decision.REFUSED).count() == 2

    # The refusal past max_refusals ends the run, and says why.
    third = call(agent, run_id, "email.send")
    assert (third["decision"], third["stop_reason"]) == ("stop", "tool_denied:email.send")
    assert "max_refusals: 2" in third["detail"]
    assert Run.objects.get(pk=run_id).status == RunStatus.STOPPED


@pytest.mark.django_db
def test_an_agent_can_have_its_own_answer_to_a_refusal(agent, outsider_agent):
    publish(
        BASE
        + "agents:\n  support-bot: {on_refusal: refuse_call}\n"
        + "refusals: {on_refusal: stop_run}\n"
    )
    mine, theirs = start(agent), start(outsider_agent)
    assert call(agent, mine, "email.send")["decision"] == "refused"
    assert call(outsider_agent, theirs, "email.send")["decision"] == "stop"


@pytest.mark.django_db
def test_budgets_and_loops_stop_the_run_even_with_refuse_call(agent):
    publish(BASE + "refusals: {on_refusal: refuse_call, max_refusals: 5}\nloop: {max_repeats: 2}\n")
    run_id = start(agent)
    answers = [call(agent, run_id, "search.read", {"q": "same"}) for _ in range(3)]
    assert [a["decision"] for a in answers] == ["allow", "allow", "stop"]
    assert answers[-1]["stop_reason"] == "loop_detected:search.read"
