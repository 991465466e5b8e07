"""Replay: re-deciding recorded runs against another policy, golden runs, dry runs."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents.gateway import services
from agents.models import GoldenRun, Run, ToolCall, TraceEvent
from agents.monitoring import replay
from agents.policy.document import parse_yaml
from agents.policy.selectors import policy_current
from approvals.services import approval_decide
from opsconsole.errors import Conflict
from opsconsole.models import AuditEntry

LENIENT = """
tools:
  allow: ["search.read", "kb.read", "email.send"]
  definitions:
    email.send: {effect: write, approval: {required: false}}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}
"""
# The same without kb.read.
STRICTER = """
tools:
  allow: ["search.read", "email.send"]
  definitions:
    email.send: {effect: write, approval: {required: false}}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}
"""


def recorded_run(agent, calls: list[tuple[str, dict]], *, finish: bool = True) -> Run:
    run, _ = services.run_start(agent=agent, task="look things up", agent_version="v1")
    services.step_record(agent=agent, run_id=run.pk, tokens_in=100, tokens_out=20)
    for tool, args in calls:
        call = services.tool_call_decide(agent=agent, run_id=run.pk, tool=tool, args=args)
        if call.decision == "allow":
            services.tool_call_report(
                agent=agent, tool_call_id=call.pk, ok=True, output={"title": "x"}, latency_ms=5
            )
    run.refresh_from_db()
    if finish and run.is_active:
        services.run_finish(agent=agent, run_id=run.pk, status="succeeded")
    run.refresh_from_db()
    return run


LOOKUPS = [("search.read", {"q": "a"}), ("kb.read", {"id": 1}), ("search.read", {"q": "b"})]


@pytest.mark.django_db
def test_replaying_under_the_same_policy_changes_nothing(agent, publish_policy):
    publish_policy(LENIENT)
    run = recorded_run(agent.agent, LOOKUPS)

    result = replay.replay_run(run)

    assert result.old_stop_reason == result.new_stop_reason == "ok"
    assert not result.changed
    assert [d.new_decision for d in result.tool_calls] == ["allow", "allow", "allow"]


@pytest.mark.django_db
def test_a_stricter_policy_reports_the_changed_decision_and_stop_reason_without_calling_a_tool(
    agent, publish_policy
):
    publish_policy(LENIENT)
    run = recorded_run(agent.agent, LOOKUPS)
    calls_before, events_before = ToolCall.objects.count(), TraceEvent.objects.count()

    with CaptureQueriesContext(connection) as queries:
        result = replay.replay_run(run, replay.draft_policy(parse_yaml(STRICTER)))

    assert result.new_stop_reason == "tool_denied:kb.read"
    assert result.old_stop_reason == "ok"
    first, second, third = result.tool_calls
    assert (first.old_decision, first.new_decision) == ("allow", "allow")
    assert (second.old_decision, second.new_decision) == ("allow", "stop")
    assert (second.old_stop_reason, second.new_stop_reason) == ("", "tool_denied:kb.read")
    # A stopped run stays stopped: the later call gets the same reason.
    assert (third.new_decision, third.new_stop_reason) == ("stop", "tool_denied:kb.read")
    assert result.differences() == [
        "tool_call 2 kb.read: allow -> stop tool_denied:kb.read",
        "tool_call 3 search.read: allow -> stop tool_denied:kb.read",
        "stop reason: ok -> tool_denied:kb.read",
    ]
    # Nothing was called and nothing was written: the recording stood in for the tools.
    assert not [
        q for q in queries.captured_queries if not q["sql"].lstrip().upper().startswith("SELECT")
    ]
    assert (ToolCall.objects.count(), TraceEvent.objects.count()) == (calls_before, events_before)
    run.refresh_from_db()
    assert run.stop_reason == "ok"


@pytest.mark.django_db
def test_a_tighter_budget_stops_the_replay_at_the_call_that_would_exceed_it(agent, publish_policy):
    publish_policy(LENIENT)
    run = recorded_run(agent.agent, LOOKUPS)
    tighter = parse_yaml(LENIENT.replace("max_tool_calls: 15", "max_tool_calls: 2"))

    result = replay.replay_run(run, replay.draft_policy(tighter))

    assert [d.new_decision for d in result.tool_calls] == ["allow", "allow", "stop"]
    assert result.new_stop_reason == "max_tool_calls"
    assert result.newly_stopped


@pytest.mark.django_db
def test_a_looser_policy_lets_a_stopped_run_go_past_its_recording(agent, publish_policy):
    publish_policy(STRICTER)
    run = recorded_run(agent.agent, LOOKUPS)
    assert run.stop_reason == "tool_denied:kb.read"

    result = replay.replay_run(run, replay.draft_policy(parse_yaml(LENIENT)))

    assert [d.new_decision for d in result.tool_calls] == ["allow", "allow"]
    assert result.new_stop_reason is None
    assert (
        result.differences()[-1]
        == "stop reason: tool_denied:kb.read -> (would go on past the recording)"
    )
    assert not result.newly_stopped


@pytest.mark.django_db
def test_a_write_that_now_needs_approval_is_held_and_assumed_approved(agent, publish_policy):
    publish_policy(LENIENT)
    run = recorded_run(agent.agent, [("email.send", {"to": "a"})])
    approvals = parse_yaml(LENIENT.replace("required: false", "required: true"))

    result = replay.replay_run(run, replay.draft_policy(approvals))

    (call,) = result.tool_calls
    assert (call.old_decision, call.new_decision) == ("allow", "pending_approval")
    assert call.note == "approval assumed"
    assert result.new_stop_reason == "ok"


@pytest.mark.django_db
def test_a_recorded_rejection_stands_while_the_write_needs_approval(
    agent, reviewer, publish_policy
):
    publish_policy(LENIENT.replace("required: false", "required: true"))
    bot = agent.agent
    run, _ = services.run_start(agent=bot, task="write")
    call = services.tool_call_decide(agent=bot, run_id=run.pk, tool="email.send", args={"to": "a"})
    approval_decide(
        request_id=call.approval.pk, reviewer=reviewer.user, verdict="reject", comment="no"
    )
    run.refresh_from_db()
    assert run.stop_reason == "approval_rejected:email.send"

    same = replay.replay_run(run)
    lenient = replay.replay_run(run, replay.draft_policy(parse_yaml(LENIENT)))

    assert not same.changed
    assert same.tool_calls[0].new_stop_reason == "approval_rejected:email.send"
    assert lenient.tool_calls[0].new_decision == "allow"
    assert lenient.new_stop_reason is None


@pytest.mark.django_db
def test_a_stricter_output_schema_fails_the_recorded_output(agent, publish_policy):
    publish_policy(LENIENT)
    run = recorded_run(agent.agent, [("search.read", {"q": "a"})])
    strict = parse_yaml(LENIENT)
    strict["tools"]["definitions"]["search.read"] = {
        "output_schema": {"type": "object", "required": ["url"]}
    }

    result = replay.replay_run(run, replay.draft_policy(strict))

    (call,) = result.tool_calls
    assert (call.old_valid, call.new_valid) == (True, False)
    assert result.new_stop_reason == "invalid_tool_output:search.read"


@pytest.mark.django_db
def test_the_dry_run_counts_the_recent_runs_a_change_would_have_stopped(
    agent, publish_policy, django_assert_num_queries
):
    publish_policy(LENIENT)
    bot = agent.agent
    for _ in range(2):
        recorded_run(bot, LOOKUPS)
    for _ in range(3):
        recorded_run(bot, [("search.read", {"q": "only search"})])
    recorded_run(bot, LOOKUPS, finish=False)  # still running: not part of the dry run

    with django_assert_num_queries(3):
        dry_run = replay.policy_dry_run(parse_yaml(STRICTER))

    assert dry_run.replayed == 5
    assert len(dry_run.stopped) == 2
    assert {result.new_stop_reason for result in dry_run.stopped} == {"tool_denied:kb.read"}
    assert replay.policy_dry_run(parse_yaml(STRICTER), limit=3).replayed == 3


@pytest.mark.django_db
def test_marking_a_golden_run_keeps_its_recording_beyond_trace_retention(agent, publish_policy):
    publish_policy(LENIENT)
    run = recorded_run(agent.agent, LOOKUPS)

    golden = replay.golden_mark(run_id=run.pk, actor="user:olivia", note="the happy path")
    again = replay.golden_mark(run_id=run.pk, actor="user:olivia")
    TraceEvent.objects.filter(run=run).delete()  # as traces_purge would

    assert again.pk == golden.pk
    assert AuditEntry.objects.filter(action="run.golden_mark", target_id=str(run.pk)).count() == 1
    ((_, result),) = replay.golden_replay(GoldenRun.objects.all(), policy_current())
    assert not result.changed


@pytest.mark.django_db
def test_a_running_run_cannot_be_golden(agent, publish_policy):
    publish_policy(LENIENT)
    run = recorded_run(agent.agent, LOOKUPS, finish=False)

    with pytest.raises(Conflict):
        replay.golden_mark(run_id=run.pk, actor="user:olivia")
    assert not GoldenRun.objects.exists()


@pytest.mark.django_db
def test_the_golden_command_exits_zero_when_nothing_differs(agent, publish_policy):
    publish_policy(LENIENT)
    replay.golden_mark(run_id=recorded_run(agent.agent, LOOKUPS).pk, actor="system")
    out = io.StringIO()

    call_command("run_golden", stdout=out)

    assert "1 golden run(s) replayed against policy v" in out.getvalue()
    assert "no difference" in out.getvalue()


@pytest.mark.django_db
def test_the_golden_command_exits_non_zero_on_a_difference_and_prints_it(
    agent, publish_policy, tmp_path
):
    publish_policy(LENIENT)
    run = recorded_run(agent.agent, LOOKUPS)
    replay.golden_mark(run_id=run.pk, actor="system")
    draft = tmp_path / "policy.yaml"
    draft.write_text(STRICTER)
    out = io.StringIO()

    with pytest.raises(CommandError) as failure:
        call_command("run_golden", policy=str(draft), stdout=out)

    assert failure.value.returncode == 1
    assert f"run {run.pk}" in out.getvalue()
    assert "stop reason: ok -> tool_denied:kb.read" in out.getvalue()
    assert "1 of 1 golden run(s) differ" in str(failure.value)


@pytest.mark.django_db
def test_the_golden_command_refuses_an_invalid_policy_file(tmp_path):
    draft = tmp_path / "policy.yaml"
    draft.write_text("tools: {allow: 3}")

    with pytest.raises(CommandError) as failure:
        call_command("run_golden", policy=str(draft))

    assert failure.value.returncode == 2
