"""Observe mode: the gateway decides every call, step, result and finish as in enforce mode and
records it, but answers allow: nothing is stopped, no approval is requested, and the run shows
what enforcing would have done ("would have stopped at call 16 with max_tool_calls")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.gateway.services import runs_reap_silent
from agents.models import Agent, Run, RunStatus, ToolBreaker, ToolCall, TraceEvent
from agents.policy.services import kill_switch_set
from agents.registry.services import agent_pause, agent_set_enabled
from approvals.models import ApprovalRequest

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["search.read", "kb.read", "http.get", "email.send", "browser.open", "vendor.quote.get"]
  definitions:
    email.send:
      effect: write
      args_schema:
        type: object
        required: [to, subject]
        properties: {to: {type: string}, subject: {type: string}}
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
agents:
  support-bot: {mode: MODE}
"""


@pytest.fixture
def observed(agent, publish_policy):
    """The support agent in observe mode (set in the policy, as a team would)."""
    publish_policy(POLICY.replace("MODE", "observe"))
    assert Agent.objects.get(pk=agent.agent.pk).mode == "observe"
    return agent


def call(agent, run_id, tool, args=None):
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args or {}}
    )
    assert response.status_code == 200, response.content
    return response.json()


def step(agent, run_id, **body):
    response = agent.api.post_json(f"/api/v1/runs/{run_id}/steps", body)
    assert response.status_code == 200, response.content
    return response.json()


def assert_allowed(answer):
    """What the agent sees in observe mode, whatever the gateway decided."""
    assert answer["decision"] in ("allow", "continue"), answer
    assert answer["stop_reason"] is None, answer


def assert_would_stop(run_id, reason, at, *, call_id=None):
    run = Run.objects.get(pk=run_id)
    assert run.status == RunStatus.RUNNING
    assert run.stop_reason == ""
    assert run.mode == "observe"
    assert (run.would_stop_reason, run.would_stop_at) == (reason, at)
    assert run.would_headline == f"would have stopped at {at} with {reason}"
    if call_id is not None:
        tool_call = ToolCall.objects.get(pk=call_id)
        assert (tool_call.decision, tool_call.would_decision) == ("allow", "stop")
        assert tool_call.would_stop_reason == reason
        assert tool_call.counted  # the call happens: it counts against the run's usage
    return run


# --- budgets ------------------------------------------------------------------------------------


def test_the_sixteenth_call_is_allowed_and_shows_it_would_have_stopped_the_run(observed, start_run):
    run = start_run()
    for i in range(15):
        answer = call(observed, run["id"], "kb.read", {"q": i})
        assert_allowed(answer)
        assert ToolCall.objects.get(pk=answer["id"]).would_decision == "allow"
    sixteenth = call(observed, run["id"], "kb.read", {"q": 16})
    assert_allowed(sixteenth)
    stored = assert_would_stop(run["id"], "max_tool_calls", "call 16", call_id=sixteenth["id"])
    assert stored.would_stop_detail == "call 16 of 15"
    assert stored.would_headline == "would have stopped at call 16 with max_tool_calls"

    # Later calls are still decided and recorded; the first would-have stop stays the headline.
    seventeenth = call(observed, run["id"], "search.read", {"q": 17})
    assert_allowed(seventeenth)
    later = ToolCall.objects.get(pk=seventeenth["id"])
    assert (later.would_decision, later.would_stop_reason) == ("stop", "max_tool_calls")
    assert later.detail == "call 17 of 15"
    assert_would_stop(run["id"], "max_tool_calls", "call 16")
    assert Run.objects.get(pk=run["id"]).tool_calls == 17
    event = TraceEvent.objects.get(tool_call_id=sixteenth["id"])
    assert event.data["would_stop_reason"] == "max_tool_calls"


def test_the_thirty_first_step_continues_and_would_have_been_max_steps(observed, start_run):
    run = start_run()
    for _ in range(30):
        assert_allowed(step(observed, run["id"], tokens_in=1))
    assert_allowed(step(observed, run["id"], tokens_in=1))
    stored = assert_would_stop(run["id"], "max_steps", "step 31")
    assert stored.steps == 31
    last = TraceEvent.objects.filter(run_id=run["id"], kind="step").order_by("-id").first()
    assert last.data["counted"] is True
    assert last.data["would_stop_reason"] == "max_steps"


def test_a_step_past_max_tokens_continues_and_is_counted(observed, start_run):
    run = start_run(budgets={"max_tokens": 100})
    assert_allowed(step(observed, run["id"], tokens_in=60, tokens_out=40))
    assert_allowed(step(observed, run["id"], tokens_in=5))
    assert assert_would_stop(run["id"], "max_tokens", "step 2").tokens == 105


def test_a_step_past_max_usd_continues(observed, start_run):
    run = start_run(budgets={"max_usd": 1})
    assert_allowed(step(observed, run["id"], usd="0.6"))
    assert_allowed(step(observed, run["id"], usd="0.6"))
    assert float(assert_would_stop(run["id"], "max_usd", "step 2").usd) == pytest.approx(1.2)


def test_a_call_past_max_usd_is_allowed_and_charged(observed, start_run):
    run = start_run(budgets={"max_usd": 1.5})
    call(observed, run["id"], "browser.open", {"url": "a"})
    call(observed, run["id"], "browser.open", {"url": "b"})
    third = call(observed, run["id"], "browser.open", {"url": "c"})
    assert_allowed(third)
    stored = assert_would_stop(run["id"], "max_usd", "call 3", call_id=third["id"])
    assert float(stored.usd) == pytest.approx(2.1)


def test_a_call_past_max_seconds_is_allowed(observed, start_run):
    run = start_run(budgets={"max_seconds": 5})
    Run.objects.filter(pk=run["id"]).update(started_at=timezone.now() - timedelta(seconds=6))
    answer = call(observed, run["id"], "kb.read")
    assert_allowed(answer)
    assert_would_stop(run["id"], "max_seconds", "call 1", call_id=answer["id"])


def test_a_per_tool_cap_is_a_would_have_stop(observed, start_run):
    run = start_run()
    for i in range(4):
        call(observed, run["id"], "browser.open", {"url": str(i)})
    fifth = call(observed, run["id"], "browser.open", {"url": "5"})
    assert_allowed(fifth)
    assert_would_stop(run["id"], "max_tool_calls", "call 5", call_id=fifth["id"])
    assert "per-run cap" in Run.objects.get(pk=run["id"]).would_stop_detail


# --- tool policy --------------------------------------------------------------------------------


def test_a_tool_off_the_allowlist_is_allowed_and_would_have_been_denied(observed, start_run):
    run = start_run()
    answer = call(observed, run["id"], "shell.exec", {"cmd": "ls"})
    assert_allowed(answer)
    assert_would_stop(run["id"], "tool_denied:shell.exec", "call 1", call_id=answer["id"])
    assert ToolCall.objects.get(pk=answer["id"]).detail == "not on the allowlist"


def test_arguments_failing_their_schema_would_have_stopped_the_run(observed, start_run):
    run = start_run()
    answer = call(observed, run["id"], "email.send", {"to": "a"})
    assert_allowed(answer)
    stored = assert_would_stop(
        run["id"], "invalid_tool_args:email.send", "call 1", call_id=answer["id"]
    )
    assert "subject" in stored.would_stop_detail


def test_a_loop_is_recorded_and_the_call_goes_through(observed, start_run):
    run = start_run()
    for _ in range(3):
        assert_allowed(call(observed, run["id"], "kb.read", {"q": "same"}))
    fourth = call(observed, run["id"], "kb.read", {"q": "same"})
    assert_allowed(fourth)
    assert_would_stop(run["id"], "loop_detected:kb.read", "call 4", call_id=fourth["id"])


def test_an_open_breaker_is_a_would_have_degraded_stop(observed, start_run):
    ToolBreaker.objects.create(tool="vendor.quote.get", state="open", opened_at=timezone.now())
    run = start_run()
    answer = call(observed, run["id"], "vendor.quote.get", {"sku": 1})
    assert_allowed(answer)
    assert_would_stop(run["id"], "tool_degraded:vendor.quote.get", "call 1", call_id=answer["id"])
    # The breaker's own state is the gateway's, as in enforce: observing does not move it.
    assert ToolBreaker.objects.get(tool="vendor.quote.get").state == "open"


def test_an_invalid_output_is_passed_on_and_recorded_as_a_would_have_stop(observed, start_run):
    run = start_run()
    allowed = call(observed, run["id"], "kb.read", {"q": 1})
    response = observed.api.post_json(
        f"/api/v1/tool-calls/{allowed['id']}/result", {"ok": True, "output": {"oops": 1}}
    )
    assert response.status_code == 200
    assert (response.json()["valid"], response.json()["stop_reason"]) == (True, None)
    assert_would_stop(
        run["id"], "invalid_tool_output:kb.read", f"result of kb.read (call {allowed['id']})"
    )
    assert ToolCall.objects.get(pk=allowed["id"]).valid is False  # the record says what it was
    # A retried report gets the same answer.
    again = observed.api.post_json(
        f"/api/v1/tool-calls/{allowed['id']}/result", {"ok": True, "output": {"oops": 1}}
    )
    assert (again.json()["valid"], again.json()["stop_reason"]) == (True, None)


# --- approvals ----------------------------------------------------------------------------------


def test_a_write_is_allowed_without_an_approval_request(observed, start_run):
    run = start_run()
    answer = call(observed, run["id"], "email.send", {"to": "a", "subject": "b"})
    assert_allowed(answer)
    assert answer["approval"] is None
    assert not ApprovalRequest.objects.exists()
    tool_call = ToolCall.objects.get(pk=answer["id"])
    assert (tool_call.decision, tool_call.would_decision) == ("allow", "pending_approval")
    stored = Run.objects.get(pk=run["id"])
    assert stored.status == RunStatus.RUNNING
    assert (stored.would_approvals, stored.would_approval_tool) == (1, "email.send")
    assert stored.would_headline == "would have waited for approval on email.send"
    # The agent runs the tool and reports: the call was allowed.
    result = observed.api.post_json(f"/api/v1/tool-calls/{answer['id']}/result", {"ok": True})
    assert result.status_code == 200


# --- containment: the kill switch, a disabled or paused agent ----------------------------------
# People's emergency controls are never only observed: they stop an observed agent as any other.


def assert_stopped(answer, run_id, reason):
    assert (answer["decision"], answer["stop_reason"]) == ("stop", reason), answer
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.stop_reason) == (RunStatus.STOPPED, reason)
    assert run.would_stop_reason == ""  # a real stop, not a would-have one


def test_disable_writes_stops_an_observed_agents_write(observed, start_run):
    kill_switch_set(mode="disable_writes", reason="incident 42", actor="user:ada")
    run = start_run()
    response = observed.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls",
        {"tool": "email.send", "args": {"to": "a", "subject": "b"}},
    )
    assert response.status_code == 200, response.content
    assert_stopped(response.json(), run["id"], "kill_switch")
    assert not ApprovalRequest.objects.filter(tool_call__run_id=run["id"]).exists()


def test_stop_all_stops_observed_runs_and_refuses_new_ones(
    observed, outsider_agent, start_run, django_capture_on_commit_callbacks
):
    running = start_run()
    enforced = start_run(outsider_agent)
    with django_capture_on_commit_callbacks(execute=True):
        kill_switch_set(mode="stop_all", reason="incident", actor="user:ada")
    assert Run.objects.get(pk=enforced["id"]).stop_reason == "kill_switch"
    observed_run = Run.objects.get(pk=running["id"])
    assert (observed_run.status, observed_run.stop_reason) == (RunStatus.STOPPED, "kill_switch")

    started = observed.api.post_json("/api/v1/runs", {"task": "x"})
    assert started.status_code == 409, started.content
    assert started.json()["stop_reason"] == "kill_switch"


@pytest.mark.parametrize("how", ["disabled", "paused"])
def test_a_disabled_or_paused_observed_agent_is_stopped(observed, start_run, how):
    run = start_run()
    if how == "disabled":
        agent_set_enabled(agent=observed.agent, enabled=False, actor="user:ada", reason="bad")
    else:
        agent_pause(agent=observed.agent, actor="user:olivia", by="olivia", reason="incident 7")
    response = observed.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    )
    assert response.status_code == 200, response.content
    assert_stopped(response.json(), run["id"], "agent_disabled")
    assert how in ToolCall.objects.get(pk=response.json()["id"]).detail

    started = observed.api.post_json("/api/v1/runs", {"task": "x"})
    assert started.status_code == 409, started.content
    assert started.json()["stop_reason"] == "agent_disabled"


def test_a_finish_past_max_seconds_succeeds_and_says_it_would_not_have(observed, start_run):
    run = start_run(budgets={"max_seconds": 5})
    Run.objects.filter(pk=run["id"]).update(started_at=timezone.now() - timedelta(seconds=6))
    response = observed.api.post_json(
        f"/api/v1/runs/{run['id']}/finish", {"status": "succeeded", "answer": "done"}
    )
    assert response.status_code == 200, response.content
    stored = Run.objects.get(pk=run["id"])
    assert (stored.status, stored.stop_reason) == ("succeeded", "ok")
    assert (stored.would_stop_reason, stored.would_stop_at) == ("max_seconds", "finish")


def test_the_reaper_leaves_a_working_observed_run_past_max_seconds(observed, start_run):
    run = start_run(budgets={"max_seconds": 5})
    Run.objects.filter(pk=run["id"]).update(started_at=timezone.now() - timedelta(seconds=60))
    call(observed, run["id"], "kb.read")
    assert runs_reap_silent(grace_seconds=1) == 0
    assert Run.objects.get(pk=run["id"]).status == RunStatus.RUNNING
    # Silent for real (no call for longer than max_seconds and grace): it is ended.
    Run.objects.filter(pk=run["id"]).update(last_activity_at=timezone.now() - timedelta(seconds=30))
    assert runs_reap_silent(grace_seconds=1) == 1


# --- switching back -----------------------------------------------------------------------------


def test_in_enforce_mode_the_same_call_stops_the_run(agent, start_run, publish_policy):
    publish_policy(POLICY.replace("MODE", "enforce"))
    run = start_run()
    answer = call(agent, run["id"], "shell.exec")
    assert answer["decision"] == "stop"
    stored = Run.objects.get(pk=run["id"])
    assert (stored.stop_reason, stored.mode, stored.would_stop_reason) == (
        "tool_denied:shell.exec",
        "enforce",
        "",
    )
    assert ToolCall.objects.get(pk=answer["id"]).would_decision == ""


def test_switching_to_enforce_applies_the_decisions_from_the_next_call(
    observed, start_run, publish_policy
):
    run = start_run(budgets={"max_tool_calls": 1})
    call(observed, run["id"], "kb.read", {"q": 1})
    assert_allowed(call(observed, run["id"], "kb.read", {"q": 2}))
    publish_policy(POLICY.replace("MODE", "enforce"))
    answer = call(observed, run["id"], "kb.read", {"q": 3})
    assert (answer["decision"], answer["stop_reason"]) == ("stop", "max_tool_calls")
    stored = Run.objects.get(pk=run["id"])
    assert (stored.status, stored.would_stop_reason) == ("stopped", "max_tool_calls")


def test_stop_all_records_a_would_have_stop_on_runs_built_from_traces(
    observed, django_capture_on_commit_callbacks
):
    # An OTLP-observed run: the agent never asks the console, so nothing can stop it from here.
    now = timezone.now()
    traced = Run.objects.create(
        agent=observed.agent,
        task="traced",
        source="otlp",
        mode="observe",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        policy_version=1,
        started_at=now,
        last_activity_at=now,
    )
    with django_capture_on_commit_callbacks(execute=True):
        kill_switch_set(mode="stop_all", reason="incident", actor="user:ada")
    traced.refresh_from_db()
    assert (traced.status, traced.stop_reason) == (RunStatus.RUNNING, "")
    assert (traced.would_stop_reason, traced.would_stop_at) == ("kill_switch", "kill switch sweep")
