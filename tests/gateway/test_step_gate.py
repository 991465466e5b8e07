"""The step gate: the agent asks before each model call (``POST /runs/{id}/steps/gate``) and
reports the call's usage after (``POST /runs/{id}/steps/{ticket}/usage``). The call that would
break a budget is refused before it is made; the older ``POST /runs/{id}/steps`` still works."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Run, RunStatus, TraceEvent

pytestmark = pytest.mark.django_db


def gate(agent, run_id, **body):
    return agent.api.post_json(f"/api/v1/runs/{run_id}/steps/gate", body)


def usage(agent, run_id, ticket, **body):
    return agent.api.post_json(f"/api/v1/runs/{run_id}/steps/{ticket}/usage", body)


def gated(agent, run_id, **body) -> dict:
    response = gate(agent, run_id, **body)
    assert response.status_code == 200, response.content
    return response.json()


def step_events(run_id: int) -> list[dict]:
    return [e.data for e in TraceEvent.objects.filter(run_id=run_id, kind="step").order_by("id")]


def test_a_gated_step_is_counted_before_the_call_and_its_usage_recorded_after(
    agent, start_run, monkeypatch
):
    from agents.gateway import services

    run = start_run()
    pushed = []
    original = services.run_broadcast
    monkeypatch.setattr(
        services, "run_broadcast", lambda run: pushed.append(run.pk) or original(run)
    )

    answer = gated(agent, run["id"], model="small", estimate_tokens=500, estimate_usd=0.01)

    assert (answer["decision"], answer["stop_reason"], answer["step"]) == ("continue", None, 1)
    assert answer["run"]["usage"]["steps"] == 1
    assert Run.objects.get(pk=run["id"]).steps == 1
    assert pushed == [run["id"]]

    response = usage(
        agent, run["id"], answer["ticket"], tokens_in=300, tokens_out=80, usd=0.004, latency_ms=900
    )

    assert response.status_code == 200, response.content
    assert (response.json()["decision"], response.json()["stop_reason"]) == ("continue", None)
    row = Run.objects.get(pk=run["id"])
    assert (row.steps, row.tokens, str(row.usd)) == (1, 380, "0.004000")
    (event,) = step_events(run["id"])
    assert event["gate"] and event["counted"] and event["reported"]
    assert (event["model"], event["tokens_in"], event["tokens_out"], event["usd"]) == (
        "small",
        300,
        80,
        "0.004000",
    )
    assert pushed == [run["id"], run["id"]]


def test_the_step_past_max_steps_is_refused_before_the_model_call(agent, start_run):
    run = start_run(budgets={"max_steps": 2})
    for _ in range(2):
        gated(agent, run["id"], model="m")

    answer = gated(agent, run["id"], model="m")

    assert (answer["decision"], answer["stop_reason"], answer["ticket"]) == (
        "stop",
        "max_steps",
        None,
    )
    assert "step 3 refused" in answer["detail"]
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.stop_reason, row.steps) == (RunStatus.STOPPED, "max_steps", 2)
    assert [e["counted"] for e in step_events(run["id"])] == [True, True, False]


def test_an_estimate_that_would_pass_max_tokens_is_refused(agent, start_run):
    run = start_run(budgets={"max_tokens": 1000})
    ticket = gated(agent, run["id"])["ticket"]
    usage(agent, run["id"], ticket, tokens_in=800, tokens_out=100)

    answer = gated(agent, run["id"], estimate_tokens=200)

    assert (answer["decision"], answer["stop_reason"]) == ("stop", "max_tokens")
    row = Run.objects.get(pk=run["id"])
    assert (row.stop_reason, row.steps, row.tokens) == ("max_tokens", 1, 900)


def test_an_estimate_that_would_pass_max_usd_is_refused(agent, start_run):
    run = start_run(budgets={"max_usd": 0.05})
    ticket = gated(agent, run["id"])["ticket"]
    usage(agent, run["id"], ticket, usd=0.04)

    assert gated(agent, run["id"], estimate_usd=0.01)["decision"] == "continue"  # exactly at it
    answer = gated(agent, run["id"], estimate_usd=0.011)

    assert (answer["decision"], answer["stop_reason"]) == ("stop", "max_usd")
    assert Run.objects.get(pk=run["id"]).steps == 2


def test_a_run_past_max_seconds_is_refused_its_next_model_call(agent, start_run):
    run = start_run(budgets={"max_seconds": 60})
    Run.objects.filter(pk=run["id"]).update(started_at=timezone.now() - timedelta(seconds=61))

    answer = gated(agent, run["id"], model="m")

    assert (answer["decision"], answer["stop_reason"]) == ("stop", "max_seconds")
    assert Run.objects.get(pk=run["id"]).steps == 0


def test_usage_that_goes_past_a_budget_is_recorded_and_stops_the_run(agent, start_run):
    run = start_run(budgets={"max_tokens": 1000})
    ticket = gated(agent, run["id"], estimate_tokens=500)["ticket"]

    response = usage(agent, run["id"], ticket, tokens_in=900, tokens_out=300)

    assert response.status_code == 200
    assert (response.json()["decision"], response.json()["stop_reason"]) == ("stop", "max_tokens")
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.stop_reason, row.tokens) == (RunStatus.STOPPED, "max_tokens", 1200)


def test_a_retried_gate_with_the_same_key_counts_one_step(agent, start_run):
    run = start_run()

    first = gated(agent, run["id"], model="m", idempotency_key="gate-1")
    again = gated(agent, run["id"], model="m", idempotency_key="gate-1")

    assert again["ticket"] == first["ticket"]
    assert Run.objects.get(pk=run["id"]).steps == 1
    assert len(step_events(run["id"])) == 1


def test_usage_is_reported_once_per_ticket(agent, start_run):
    run = start_run()
    ticket = gated(agent, run["id"])["ticket"]
    assert usage(agent, run["id"], ticket, tokens_in=10).status_code == 200

    repeat = usage(agent, run["id"], ticket, tokens_in=10)
    different = usage(agent, run["id"], ticket, tokens_in=11)

    assert repeat.status_code == 200 and repeat.json()["decision"] == "continue"
    assert different.status_code == 409
    assert different.json()["error"] == "usage_already_reported"
    assert Run.objects.get(pk=run["id"]).tokens == 10


def test_a_ticket_of_another_run_or_agent_is_not_found(agent, outsider_agent, start_run):
    run = start_run()
    other = start_run()
    ticket = gated(agent, run["id"])["ticket"]

    assert usage(agent, other["id"], ticket).status_code == 404
    assert usage(outsider_agent, run["id"], ticket).status_code == 404
    assert gate(outsider_agent, run["id"]).status_code == 404
    assert Run.objects.get(pk=run["id"]).tokens == 0


@pytest.mark.parametrize(
    "body",
    [{"estimate_tokens": -1}, {"estimate_usd": "lots"}, {"model": "m" * 201}],
    ids=["negative", "not-a-number", "long-model"],
)
def test_a_malformed_gate_is_a_400_and_counts_nothing(agent, start_run, body):
    run = start_run()

    response = gate(agent, run["id"], **body)

    assert response.status_code == 400
    assert response.json()["error"] == "malformed"
    assert Run.objects.get(pk=run["id"]).steps == 0


def test_the_gate_needs_an_agent_key_and_post(agent, oncall, start_run):
    run = start_run()

    assert oncall.api.post_json(f"/api/v1/runs/{run['id']}/steps/gate", {}).status_code == 403
    assert agent.api.get(f"/api/v1/runs/{run['id']}/steps/gate").status_code == 405
    assert Run.objects.get(pk=run["id"]).steps == 0


def test_the_older_step_report_still_counts_after_the_call(agent, start_run):
    run = start_run(budgets={"max_steps": 1})
    body = {"model": "m", "tokens_in": 10, "tokens_out": 5, "usd": 0.001}

    first = agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", body).json()
    second = agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", body).json()

    assert (first["decision"], second["decision"], second["stop_reason"]) == (
        "continue",
        "stop",
        "max_steps",
    )
    assert Run.objects.get(pk=run["id"]).tokens == 15


def test_in_observe_mode_the_gate_lets_the_call_through_and_records_the_would_be_stop(
    agent, start_run, publish_policy
):
    publish_policy(
        """
tools: {allow: ["search.read"]}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}
agents:
  support-bot: {mode: observe}
"""
    )
    run = start_run(budgets={"max_steps": 1, "max_tokens": 100})
    first = gated(agent, run["id"])
    usage(agent, run["id"], first["ticket"], tokens_in=150)

    second = gated(agent, run["id"])

    assert (second["decision"], second["stop_reason"]) == ("continue", None)
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.steps, row.tokens) == (RunStatus.RUNNING, 2, 150)
    assert (row.would_stop_reason, row.would_stop_at) == ("max_tokens", "step 1")
    assert step_events(run["id"])[1]["would_stop_reason"] == "max_steps"
