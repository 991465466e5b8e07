"""The gateway API: budgets, default-deny, validation, loops, breakers, approvals, stop reasons."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from agents.models import Run, RunStatus, ToolBreaker, ToolCall, TraceEvent
from agents.policy.services import kill_switch_set
from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide

pytestmark = pytest.mark.django_db

WRITE_POLICY = """
tools:
  allow: ["search.read", "kb.read", "http.get", "email.send", "browser.open", "vendor.quote.get", "ticket.update"]
  definitions:
    email.send:
      effect: write
      args_schema:
        type: object
        required: [to, subject]
        properties: {to: {type: string}, subject: {type: string}}
      approval: {timeout_seconds: 60}
    ticket.update:
      effect: write
      approval: {reviewers: 2}
    browser.open:
      effect: read
      expensive: true
      cost_usd: 0.7
      max_calls_per_run: 4
    kb.read:
      output_schema: {type: object, required: [text], properties: {text: {type: string}}}
      max_output_bytes: 200
    vendor.quote.get:
      breaker: {window: 10, min_calls: 4, failure_rate: 0.5, cooldown_seconds: 30, trial_calls: 1}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15, max_usd: 10, max_tokens: 100000}
writes: {require_approval: true}
"""


def call(agent, run_id, tool, args=None, **extra):
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args or {}, **extra}
    )
    assert response.status_code == 200, response.content
    return response.json()


def report(agent, tool_call_id, **body):
    body.setdefault("ok", True)
    return agent.api.post_json(f"/api/v1/tool-calls/{tool_call_id}/result", body)


# --- runs ---------------------------------------------------------------------------------------


def test_it_starts_a_run_with_budgets_capped_by_the_policy(agent, start_run):
    run = start_run(budgets={"max_tool_calls": 100, "max_steps": 5})

    assert run["status"] == "running"
    assert run["stop_reason"] is None
    assert run["budgets"]["max_tool_calls"] == 15  # the seed ceiling wins over 100
    assert run["budgets"]["max_steps"] == 5  # the smaller request wins
    assert run["budgets"]["max_seconds"] == 90
    assert run["policy_version"] == 1  # the seed policy, loaded by the migrations
    db_run = Run.objects.get(pk=run["id"])
    assert db_run.max_tool_calls == 15
    assert TraceEvent.objects.filter(run=db_run, kind="run_started").count() == 1


def test_run_creation_needs_a_valid_agent_key(anonymous, agent):
    assert anonymous.post_json("/api/v1/runs", {"task": "x"}).status_code == 401
    bad = type(agent.api)("aok_not-a-real-key")
    response = bad.post_json("/api/v1/runs", {"task": "x"})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert Run.objects.count() == 0


def test_a_revoked_key_is_refused(agent):
    from agents.registry.services import agent_key_revoke

    agent_key_revoke(key_id=agent.agent.keys.get().pk, actor="system")
    assert agent.api.post_json("/api/v1/runs", {"task": "x"}).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"task": ""},
        {"task": "x", "budgets": {"max_steps": -1}},
        {"task": "x", "budgets": {"max_cats": 3}},
        {"task": "x", "budgets": "lots"},
        {"task": "x", "metadata": [1]},
    ],
)
def test_bad_run_input_is_a_400_and_creates_nothing(agent, body):
    response = agent.api.post_json("/api/v1/runs", body)
    assert response.status_code == 400
    assert response.json()["error"] == "malformed"
    assert Run.objects.count() == 0


def test_a_malformed_body_is_a_400(agent):
    response = agent.api.post("/api/v1/runs", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "malformed"


def test_run_creation_is_idempotent(agent, start_run):
    first = start_run(idempotency_key="job-7")
    again = agent.api.post_json(
        "/api/v1/runs", {"task": "answer a customer question", "idempotency_key": "job-7"}
    )
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert Run.objects.count() == 1

    different = agent.api.post_json(
        "/api/v1/runs", {"task": "something else", "idempotency_key": "job-7"}
    )
    assert different.status_code == 409
    assert different.json()["error"] == "idempotency_key_reused"
    assert Run.objects.count() == 1


def test_an_agent_sees_only_its_own_runs(agent, outsider_agent, start_run):
    run = start_run()
    assert outsider_agent.api.get(f"/api/v1/runs/{run['id']}").status_code == 404
    assert call_status(outsider_agent, run["id"], "kb.read") == 404
    assert agent.api.get(f"/api/v1/runs/{run['id']}").json()["id"] == run["id"]


def call_status(agent, run_id, tool):
    return agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": {}}
    ).status_code


def test_finish_ends_the_run_ok_and_a_second_finish_is_a_409(agent, start_run):
    run = start_run()
    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/finish", {"status": "succeeded", "answer": "42"}
    )
    assert response.status_code == 200
    assert response.json()["stop_reason"] == "ok"
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason, db_run.answer) == ("succeeded", "ok", "42")

    again = agent.api.post_json(f"/api/v1/runs/{run['id']}/finish", {"status": "failed"})
    assert again.status_code == 409
    assert again.json()["error"] == "run_ended"


def test_a_failed_finish_is_stop_reason_error(agent, start_run):
    run = start_run()
    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/finish", {"status": "failed", "error": "boom"}
    )
    assert response.json()["stop_reason"] == "error"
    assert Run.objects.get(pk=run["id"]).status == RunStatus.FAILED


# --- budgets ------------------------------------------------------------------------------------


def test_it_stops_the_run_at_the_sixteenth_tool_call(agent, start_run):
    run = start_run()
    for i in range(15):
        answer = call(agent, run["id"], "kb.read", {"q": i})
        assert answer["decision"] == "allow", (i, answer)
    sixteenth = call(agent, run["id"], "kb.read", {"q": 16})

    assert sixteenth["decision"] == "stop"
    assert sixteenth["stop_reason"] == "max_tool_calls"
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason, db_run.tool_calls) == (
        "stopped",
        "max_tool_calls",
        15,
    )


def test_a_stopped_run_stays_stopped_with_the_same_reason(agent, start_run):
    run = start_run(budgets={"max_tool_calls": 1})
    call(agent, run["id"], "kb.read", {"q": 1})
    assert call(agent, run["id"], "kb.read", {"q": 2})["stop_reason"] == "max_tool_calls"

    later = call(agent, run["id"], "search.read", {"q": 3})
    assert (later["decision"], later["stop_reason"]) == ("stop", "max_tool_calls")
    step = agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", {"tokens_in": 1}).json()
    assert (step["decision"], step["stop_reason"]) == ("stop", "max_tool_calls")
    assert Run.objects.get(pk=run["id"]).tool_calls == 1


def test_it_stops_at_the_thirty_first_step(agent, start_run):
    run = start_run()
    for _ in range(30):
        answer = agent.api.post_json(
            f"/api/v1/runs/{run['id']}/steps", {"model": "m", "tokens_in": 10}
        ).json()
        assert answer["decision"] == "continue"
    answer = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/steps", {"model": "m", "tokens_in": 10}
    ).json()
    assert (answer["decision"], answer["stop_reason"]) == ("stop", "max_steps")
    assert Run.objects.get(pk=run["id"]).steps == 30


def test_tokens_and_usd_budgets_stop_a_step(agent, start_run):
    run = start_run(budgets={"max_tokens": 100})
    ok = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/steps", {"tokens_in": 60, "tokens_out": 40}
    ).json()
    assert ok["decision"] == "continue"
    over = agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", {"tokens_in": 1}).json()
    assert over["stop_reason"] == "max_tokens"
    assert Run.objects.get(pk=run["id"]).tokens == 100

    run = start_run(budgets={"max_usd": 1})
    agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", {"usd": "0.6"})
    over = agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", {"usd": "0.6"}).json()
    assert over["stop_reason"] == "max_usd"
    assert float(Run.objects.get(pk=run["id"]).usd) == pytest.approx(0.6)


def test_max_seconds_stops_the_next_call(agent, start_run):
    run = start_run(budgets={"max_seconds": 5})
    Run.objects.filter(pk=run["id"]).update(started_at=timezone.now() - timedelta(seconds=6))
    answer = call(agent, run["id"], "kb.read")
    assert answer["stop_reason"] == "max_seconds"


def test_tool_cost_counts_against_max_usd(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    run = start_run(budgets={"max_usd": 1.5})
    assert call(agent, run["id"], "browser.open", {"url": "a"})["decision"] == "allow"
    assert call(agent, run["id"], "browser.open", {"url": "b"})["decision"] == "allow"
    third = call(agent, run["id"], "browser.open", {"url": "c"})
    assert third["stop_reason"] == "max_usd"
    assert float(Run.objects.get(pk=run["id"]).usd) == pytest.approx(1.4)


def test_a_per_tool_cap_stops_the_run(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    run = start_run()
    for i in range(4):
        assert call(agent, run["id"], "browser.open", {"url": str(i)})["decision"] == "allow"
    fifth = call(agent, run["id"], "browser.open", {"url": "5"})
    assert fifth["stop_reason"] == "max_tool_calls"
    assert "per-run cap" in fifth["detail"]


# --- allowlist, schemas, loops ------------------------------------------------------------------


def test_an_unknown_tool_is_denied_by_default(agent, start_run):
    run = start_run()
    answer = call(agent, run["id"], "shell.exec", {"cmd": "rm -rf /"})
    assert (answer["decision"], answer["stop_reason"]) == ("stop", "tool_denied:shell.exec")
    assert Run.objects.get(pk=run["id"]).tool_calls == 0


def test_an_agent_allowlist_narrows_the_global_one(db, publish_policy):
    from tests.conftest import make_agent

    narrow = make_agent("narrow-bot", tools=["kb.read"])
    run = narrow.api.post_json("/api/v1/runs", {"task": "x"}).json()
    assert call(narrow, run["id"], "kb.read")["decision"] == "allow"
    assert call(narrow, run["id"], "search.read")["stop_reason"] == "tool_denied:search.read"


def test_arguments_failing_the_schema_stop_the_run(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    run = start_run()
    answer = call(agent, run["id"], "email.send", {"to": "a@example.com"})
    assert answer["stop_reason"] == "invalid_tool_args:email.send"
    assert "subject" in answer["detail"]
    assert ApprovalRequest.objects.count() == 0


def test_the_same_call_repeated_past_the_threshold_is_a_loop(agent, start_run):
    run = start_run()
    for _ in range(3):
        assert call(agent, run["id"], "search.read", {"q": "same"})["decision"] == "allow"
    fourth = call(agent, run["id"], "search.read", {"q": "same"})
    assert fourth["stop_reason"] == "loop_detected:search.read"


def test_output_failing_its_schema_or_size_cap_stops_the_run(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    run = start_run()
    allowed = call(agent, run["id"], "kb.read", {"q": 1})
    response = report(agent, allowed["id"], output={"text": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["valid"] is False
    assert body["stop_reason"] == "invalid_tool_output:kb.read"
    assert ToolCall.objects.get(pk=allowed["id"]).output is None  # never passed on

    run = start_run()
    allowed = call(agent, run["id"], "kb.read", {"q": 2})
    body = report(agent, allowed["id"], output={"text": "x" * 500}).json()
    assert body["stop_reason"] == "invalid_tool_output:kb.read"
    assert "over the cap" in body["errors"][0]


def test_a_valid_result_is_recorded_once_and_a_different_second_one_is_a_409(agent, start_run):
    run = start_run()
    allowed = call(agent, run["id"], "kb.read", {"q": 1})
    first = report(agent, allowed["id"], output={"text": "hi"}, latency_ms=12)
    assert first.json() | {"run": None} == {
        "valid": True,
        "stop_reason": None,
        "errors": [],
        "run": None,
    }
    assert report(agent, allowed["id"], output={"text": "hi"}, latency_ms=12).status_code == 200
    conflict = report(agent, allowed["id"], output={"text": "other"})
    assert conflict.status_code == 409
    assert ToolCall.objects.get(pk=allowed["id"]).output == {"text": "hi"}


def test_a_result_for_a_call_that_was_not_allowed_is_refused(agent, start_run):
    run = start_run()
    denied = call(agent, run["id"], "shell.exec")
    assert denied["decision"] == "stop"
    response = report(agent, denied["id"], output={})
    assert response.status_code == 409
    assert response.json()["error"] == "not_allowed"


# --- circuit breaker ----------------------------------------------------------------------------


def test_failures_open_the_breaker_and_calls_meanwhile_are_degraded(
    agent, start_run, publish_policy
):
    publish_policy(WRITE_POLICY)
    run = start_run()
    for i in range(4):
        allowed = call(agent, run["id"], "vendor.quote.get", {"sku": i})
        report(agent, allowed["id"], ok=False, error="vendor 503")
    assert ToolBreaker.objects.get(tool="vendor.quote.get").state == "open"

    run = start_run()
    answer = call(agent, run["id"], "vendor.quote.get", {"sku": 99})
    assert answer["stop_reason"] == "tool_degraded:vendor.quote.get"


def test_after_the_cooldown_a_trial_success_closes_the_breaker(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    ToolBreaker.objects.create(
        tool="vendor.quote.get", state="open", opened_at=timezone.now() - timedelta(seconds=31)
    )
    run = start_run()
    trial = call(agent, run["id"], "vendor.quote.get", {"sku": 1})
    assert trial["decision"] == "allow"
    assert ToolBreaker.objects.get(tool="vendor.quote.get").state == "half_open"
    # trial_calls is 1: a second call while the trial is out is still degraded
    other = start_run()
    assert (
        call(agent, other["id"], "vendor.quote.get", {"sku": 2})["stop_reason"]
        == "tool_degraded:vendor.quote.get"
    )

    report(agent, trial["id"], output={"price": 3})
    assert ToolBreaker.objects.get(tool="vendor.quote.get").state == "closed"
    again = start_run()
    assert call(agent, again["id"], "vendor.quote.get", {"sku": 3})["decision"] == "allow"


# --- kill switch and disabled agents ------------------------------------------------------------


def test_disable_writes_stops_a_write_but_not_a_read(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    kill_switch_set(mode="disable_writes", reason="incident 42", actor="user:ada")
    run = start_run()
    assert call(agent, run["id"], "kb.read", {"q": 1})["decision"] == "allow"
    answer = call(agent, run["id"], "email.send", {"to": "a", "subject": "b"})
    assert answer["stop_reason"] == "kill_switch"


def test_disable_expensive_stops_an_expensive_tool(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    kill_switch_set(mode="disable_expensive", reason="vendor outage", actor="user:ada")
    run = start_run()
    assert call(agent, run["id"], "kb.read", {"q": 1})["decision"] == "allow"
    assert call(agent, run["id"], "browser.open", {"url": "x"})["stop_reason"] == "kill_switch"


def test_stop_all_refuses_new_runs_and_stops_running_ones(
    agent, start_run, django_capture_on_commit_callbacks
):
    run = start_run()
    with django_capture_on_commit_callbacks(execute=True):
        kill_switch_set(mode="stop_all", reason="incident", actor="user:ada")
    refused = agent.api.post_json("/api/v1/runs", {"task": "x"})
    assert refused.status_code == 409
    assert refused.json()["stop_reason"] == "kill_switch"
    assert (
        Run.objects.get(pk=run["id"]).stop_reason == "kill_switch"
    )  # swept, not only at next call
    assert call(agent, run["id"], "kb.read")["stop_reason"] == "kill_switch"


def test_a_disabled_agent_is_stopped_and_cannot_start_runs(agent, start_run):
    from agents.registry.services import agent_set_enabled

    run = start_run()
    agent_set_enabled(agent=agent.agent, enabled=False, actor="user:ada", reason="misbehaving")
    assert call(agent, run["id"], "kb.read")["stop_reason"] == "agent_disabled"
    refused = agent.api.post_json("/api/v1/runs", {"task": "x"})
    assert (refused.status_code, refused.json()["stop_reason"]) == (409, "agent_disabled")


# --- approvals ----------------------------------------------------------------------------------


def test_a_write_waits_for_approval_then_is_allowed(agent, start_run, publish_policy, reviewer):
    publish_policy(WRITE_POLICY)
    run = start_run()
    pending = call(agent, run["id"], "email.send", {"to": "a@example.com", "subject": "hi"})
    assert pending["decision"] == "pending_approval"
    assert pending["approval"]["status"] == "pending"
    assert Run.objects.get(pk=run["id"]).status == "waiting_approval"
    assert report(agent, pending["id"], output={}).status_code == 409  # not allowed yet

    approval_decide(request_id=pending["approval"]["id"], reviewer=reviewer.user, verdict="approve")
    polled = agent.api.get(f"/api/v1/tool-calls/{pending['id']}?wait=1").json()
    assert polled["decision"] == "allow"
    assert Run.objects.get(pk=run["id"]).status == "running"
    assert report(agent, pending["id"], output={"sent": True}).status_code == 200


def test_a_rejected_write_stops_the_run(agent, start_run, publish_policy, reviewer):
    publish_policy(WRITE_POLICY)
    run = start_run()
    pending = call(agent, run["id"], "email.send", {"to": "a", "subject": "b"})
    approval_decide(
        request_id=pending["approval"]["id"], reviewer=reviewer.user, verdict="reject", comment="no"
    )
    polled = agent.api.get(f"/api/v1/tool-calls/{pending['id']}").json()
    assert (polled["decision"], polled["stop_reason"]) == ("stop", "approval_rejected:email.send")
    assert Run.objects.get(pk=run["id"]).stop_reason == "approval_rejected:email.send"


def test_an_expired_request_times_out_and_can_never_be_approved(
    agent, start_run, publish_policy, reviewer
):
    from opsconsole.errors import Conflict

    publish_policy(WRITE_POLICY)
    run = start_run()
    pending = call(agent, run["id"], "email.send", {"to": "a", "subject": "b"})
    ApprovalRequest.objects.filter(pk=pending["approval"]["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    with pytest.raises(Conflict) as raised:
        approval_decide(
            request_id=pending["approval"]["id"], reviewer=reviewer.user, verdict="approve"
        )
    assert raised.value.code == "expired"
    assert (
        ApprovalRequest.objects.get(pk=pending["approval"]["id"]).status == ApprovalStatus.EXPIRED
    )
    polled = agent.api.get(f"/api/v1/tool-calls/{pending['id']}").json()
    assert polled["stop_reason"] == "approval_timeout:email.send"
    assert Run.objects.get(pk=run["id"]).stop_reason == "approval_timeout:email.send"


def test_the_long_poll_expires_a_request_whose_time_ran_out(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    run = start_run()
    pending = call(agent, run["id"], "email.send", {"to": "a", "subject": "b"})
    ApprovalRequest.objects.filter(pk=pending["approval"]["id"]).update(expires_at=timezone.now())
    polled = agent.api.get(f"/api/v1/tool-calls/{pending['id']}?wait=2").json()
    assert polled["stop_reason"] == "approval_timeout:email.send"


def test_the_long_poll_returns_pending_after_the_wait(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    run = start_run()
    pending = call(agent, run["id"], "email.send", {"to": "a", "subject": "b"})
    polled = agent.api.get(f"/api/v1/tool-calls/{pending['id']}?wait=0.3")
    assert polled.status_code == 200
    assert polled.json()["decision"] == "pending_approval"


@pytest.mark.parametrize("wait", ["-1", "31", "soon"])
def test_the_long_poll_refuses_a_bad_wait(agent, start_run, wait):
    run = start_run()
    allowed = call(agent, run["id"], "kb.read")
    response = agent.api.get(f"/api/v1/tool-calls/{allowed['id']}?wait={wait}")
    assert response.status_code == 400
    assert response.json()["error"] == "malformed"


def test_the_long_poll_hides_other_agents_calls(agent, outsider_agent, start_run, anonymous):
    run = start_run()
    allowed = call(agent, run["id"], "kb.read")
    assert outsider_agent.api.get(f"/api/v1/tool-calls/{allowed['id']}").status_code == 404
    assert anonymous.get(f"/api/v1/tool-calls/{allowed['id']}").status_code == 401


def test_an_approval_is_bound_to_its_exact_arguments(agent, start_run, publish_policy, reviewer):
    publish_policy(WRITE_POLICY)
    run = start_run()
    first = call(agent, run["id"], "email.send", {"to": "a", "subject": "b"})
    approval_decide(request_id=first["approval"]["id"], reviewer=reviewer.user, verdict="approve")
    # The same tool with other arguments needs its own approval.
    second = call(agent, run["id"], "email.send", {"to": "everyone", "subject": "b"})
    assert second["decision"] == "pending_approval"
    assert second["approval"]["id"] != first["approval"]["id"]
    assert ApprovalRequest.objects.get(pk=second["approval"]["id"]).args == {
        "to": "everyone",
        "subject": "b",
    }


def test_two_reviewers_are_needed_and_the_same_one_twice_is_refused(
    agent, start_run, publish_policy, reviewer, second_reviewer
):
    from opsconsole.errors import Conflict

    publish_policy(WRITE_POLICY)
    run = start_run()
    pending = call(agent, run["id"], "ticket.update", {"id": 1})
    request_id = pending["approval"]["id"]
    approval_decide(request_id=request_id, reviewer=reviewer.user, verdict="approve")
    assert ApprovalRequest.objects.get(pk=request_id).status == "pending"
    with pytest.raises(Conflict) as raised:
        approval_decide(request_id=request_id, reviewer=reviewer.user, verdict="approve")
    assert raised.value.code == "same_reviewer"
    approval_decide(request_id=request_id, reviewer=second_reviewer.user, verdict="approve")
    assert ApprovalRequest.objects.get(pk=request_id).status == "approved"
    assert agent.api.get(f"/api/v1/tool-calls/{pending['id']}").json()["decision"] == "allow"


def test_finishing_a_run_cancels_its_pending_approvals(agent, start_run, publish_policy):
    publish_policy(WRITE_POLICY)
    run = start_run()
    pending = call(agent, run["id"], "email.send", {"to": "a", "subject": "b"})
    agent.api.post_json(
        f"/api/v1/runs/{run['id']}/finish", {"status": "failed", "error": "gave up"}
    )
    assert ApprovalRequest.objects.get(pk=pending["approval"]["id"]).status == "cancelled"


# --- idempotent tool calls ----------------------------------------------------------------------


def test_a_retried_tool_call_returns_the_original_answer_and_spends_nothing(agent, start_run):
    run = start_run()
    first = call(agent, run["id"], "kb.read", {"q": 1}, idempotency_key="c1")
    again = call(agent, run["id"], "kb.read", {"q": 1}, idempotency_key="c1")
    assert again["id"] == first["id"]
    assert again["decision"] == "allow"
    assert Run.objects.get(pk=run["id"]).tool_calls == 1

    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls",
        {"tool": "kb.read", "args": {"q": 2}, "idempotency_key": "c1"},
    )
    assert response.status_code == 409
    assert response.json()["error"] == "idempotency_key_reused"
    assert Run.objects.get(pk=run["id"]).tool_calls == 1


@pytest.mark.parametrize(
    "body", [{}, {"tool": ""}, {"tool": "bad tool name"}, {"tool": "kb.read", "args": [1, 2]}]
)
def test_bad_tool_call_input_is_a_400_and_spends_nothing(agent, start_run, body):
    run = start_run()
    response = agent.api.post_json(f"/api/v1/runs/{run['id']}/tool-calls", body)
    assert response.status_code == 400
    assert Run.objects.get(pk=run["id"]).tool_calls == 0
    assert ToolCall.objects.count() == 0


# --- the control plane cannot decide ------------------------------------------------------------


def test_a_database_failure_is_a_503_never_an_allow(agent, start_run, monkeypatch):
    run = start_run()

    def broken(**kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr("agents.gateway.services.run_lock_for_agent", broken)
    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    )
    assert response.status_code == 503
    assert response.json()["error"] == "control_plane_unavailable"
    assert ToolCall.objects.count() == 0


def test_every_stop_reason_in_the_vocabulary_is_valid():
    from agents import stop_reasons

    assert stop_reasons.is_valid("tool_denied:email.send")
    assert not stop_reasons.is_valid("tool_denied")
    assert not stop_reasons.is_valid("ok:x")
    assert not stop_reasons.is_valid("made_up")


def test_the_openapi_schema_is_served_with_every_gateway_path(anonymous):
    response = anonymous.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    import json

    paths = json.loads(response.content)["paths"]
    for path in [
        "/api/v1/runs",
        "/api/v1/runs/{run_id}/steps",
        "/api/v1/runs/{run_id}/tool-calls",
        "/api/v1/tool-calls/{tool_call_id}",
        "/api/v1/tool-calls/{tool_call_id}/result",
        "/api/v1/runs/{run_id}/finish",
        "/api/v1/approvals",
        "/api/v1/kill-switch",
    ]:
        assert path in paths, path


def test_an_oversized_body_is_a_413_and_changes_nothing(agent, start_run):
    run = start_run()
    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls",
        {"tool": "kb.read", "args": {"blob": "a" * 2_000_000}},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert ToolCall.objects.count() == 0


@pytest.mark.parametrize("name", ["", "my bot", "x" * 101, "bot/1"])
def test_an_agent_name_the_policy_could_not_address_is_refused(db, name):
    from agents.models import Agent
    from agents.registry.services import agent_create
    from opsconsole.errors import Invalid

    with pytest.raises(Invalid):
        agent_create(name=name, actor="system")
    assert not Agent.objects.exists()


def test_float_costs_are_rounded_to_micro_dollars_not_refused(agent, start_run):
    run = start_run()
    answer = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/steps", {"usd": 0.1 + 0.2, "tokens_in": 1}
    )
    assert answer.status_code == 200
    assert str(Run.objects.get(pk=run["id"]).usd) == "0.300000"
    tiny = agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", {"usd": 1e-7})
    assert tiny.status_code == 200


def test_a_retried_report_of_an_invalid_output_gets_the_original_answer(
    agent, start_run, publish_policy
):
    publish_policy(WRITE_POLICY)
    run = start_run()
    allowed = call(agent, run["id"], "kb.read", {"q": 1})
    first = report(agent, allowed["id"], output={"text": 5})
    again = report(agent, allowed["id"], output={"text": 5})
    assert again.status_code == 200
    assert (
        again.json()["stop_reason"] == first.json()["stop_reason"] == "invalid_tool_output:kb.read"
    )
    assert report(agent, allowed["id"], output={"text": 6}).status_code == 409
