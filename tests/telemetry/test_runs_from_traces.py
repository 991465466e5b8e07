"""Traces become runs: one per trace, model steps and tool calls from each of the four attribute
vocabularies, a stop reason from the root span, and what enforcing would have done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agents.models import EventKind, Run, RunStatus, ToolCall
from agents.policy.document import SEED_POLICY_YAML, parse_yaml
from agents.policy.services import policy_publish
from agents.runs.selectors import run_trace_page
from agents.telemetry.services import observed_runs_finalize
from tests.conftest import logged_in
from tests.telemetry.conftest import PROTOBUF, export, fixture

pytestmark = pytest.mark.django_db


def run_of(trace_no: int) -> Run:
    return Run.objects.get(trace_id=f"{trace_no:032x}")


def publish(extra_yaml: str) -> None:
    policy_publish(
        document=parse_yaml(SEED_POLICY_YAML + extra_yaml), author="user:ada", reason="test"
    )


def test_genai_latest_spans_make_one_run_with_steps_tool_calls_and_its_stop(agent):
    publish("prices:\n  gpt-4o-mini: {input_per_million: 0.15, output_per_million: 0.60}\n")

    assert export(agent.key, "genai_latest.json").status_code == 200

    run = run_of(1)
    assert run.source == "otlp"
    assert run.mode == "observe"
    assert run.status == RunStatus.SUCCEEDED
    assert run.stop_reason == "ok"
    assert run.task == "Where is my refund?"
    assert run.answer == "Refunds take up to 30 days."
    assert run.agent_version == "2.0"
    assert run.steps == 2
    assert run.tokens == 1200 + 80 + 1400 + 120
    # Priced from the policy's table (by the response model's name prefix):
    # (1200 + 1400) * 0.15 / 1e6 + (80 + 120) * 0.60 / 1e6
    assert run.usd == Decimal("0.000510")
    assert run.tool_calls == 2
    assert run.elapsed_seconds == pytest.approx(1.6)
    assert run.metadata["otlp"]["service"] == "support-agent"
    assert run.metadata["otlp"]["conversation_id"] == "conv-42"
    kb, email = ToolCall.objects.filter(run=run).order_by("created_at")
    assert (kb.tool, kb.args, kb.output, kb.result_ok) == (
        "kb.read",
        {"query": "refund policy"},
        {"article": "Refunds within 30 days."},
        True,
    )
    assert (email.tool, email.result_ok, email.error) == ("email.send", False, "SMTP timeout")
    # Observed results never feed the gateway's breakers (they count reported_at rows).
    assert kb.reported_at is None and email.reported_at is None
    kinds = list(run.events.order_by("id").values_list("kind", flat=True))
    assert kinds == [
        EventKind.RUN_STARTED,
        EventKind.STEP,
        EventKind.TOOL_CALL,
        EventKind.TOOL_RESULT,
        EventKind.TOOL_CALL,
        EventKind.TOOL_RESULT,
        EventKind.STEP,
        EventKind.FINISH,
    ]


def test_it_keeps_what_enforcing_would_have_done(agent):
    # The seed policy allows search.read, kb.read and http.get only: email.send is denied.
    export(agent.key, "genai_latest.pb")

    run = run_of(1)
    assert run.status == RunStatus.SUCCEEDED  # observed: nothing was stopped
    assert run.would_stop_reason == "tool_denied:email.send"
    assert run.would_stop_at == "call 2"
    assert "would have stopped this run at call 2 (email.send)" in run.would_stop_detail
    verdicts = dict(ToolCall.objects.filter(run=run).values_list("tool", "would_decision"))
    assert verdicts == {"kb.read": "allow", "email.send": "stop"}


def test_a_budget_the_run_would_have_broken_is_a_would_have_stop(agent):
    publish("tools:\n  allow: [kb.read, email.send]\n")
    document = parse_yaml(SEED_POLICY_YAML)
    document["tools"]["allow"] = ["kb.read", "email.send"]
    document["budgets"]["max_tool_calls"] = 1
    document["writes"] = {"require_approval": False}
    policy_publish(document=document, author="user:ada", reason="one call")

    export(agent.key, "genai_latest.pb")

    run = run_of(1)
    assert run.would_stop_reason == "max_tool_calls"
    assert run.would_stop_at == "call 2"
    assert run.max_tool_calls is None  # budgets are not enforced on observed runs


def test_a_write_needing_approval_is_a_would_have_wait(agent):
    document = parse_yaml(SEED_POLICY_YAML)
    document["tools"]["allow"] = ["kb.read", "email.send"]
    policy_publish(document=document, author="user:ada", reason="writes need approval")

    export(agent.key, "genai_latest.pb")

    run = run_of(1)
    assert run.would_approvals == 1
    assert run.would_approval_tool == "email.send"
    assert run.would_stop_reason == ""


def test_genai_legacy_attributes_are_read(agent):
    export(agent.key, "genai_legacy.pb")

    run = run_of(2)
    assert (run.steps, run.tokens, run.tool_calls) == (1, 550, 1)
    step = run.events.get(kind=EventKind.STEP)
    assert step.data["model"] == "gpt-4o"
    assert step.data["provider"] == "openai"
    assert ToolCall.objects.get(run=run).tool == "search.read"
    assert run.metadata["otlp"]["agent_name"] == "research-bot"


def test_openinference_attributes_are_read_and_the_clients_cost_wins(agent):
    publish("prices:\n  gpt-4o-mini: {input_per_million: 100, output_per_million: 100}\n")

    export(agent.key, "openinference.json")

    run = run_of(3)
    assert (run.steps, run.tokens) == (1, 330)
    assert run.usd == Decimal("0.012300")  # llm.cost.total, not the price table
    step = run.events.get(kind=EventKind.STEP)
    assert step.data["usd_source"] == "client"
    assert step.data["summary"] == "I will search the web."
    call = ToolCall.objects.get(run=run)
    assert (call.tool, call.args, call.output) == (
        "browser.open",
        {"url": "https://vendor.example/status"},
        "vendor is down",
    )
    # The framework ran out of turns (MaxTurnsExceeded on the root): a step limit of its own.
    assert run.status == RunStatus.STOPPED
    assert run.stop_reason == "max_steps"
    assert "MaxTurnsExceeded" in run.error
    assert run.metadata["otlp"]["conversation_id"] == "sess-7"


def test_openllmetry_attributes_are_read(agent):
    export(agent.key, "openllmetry.pb.gz")

    run = run_of(4)
    assert (run.steps, run.tokens, run.tool_calls) == (1, 220, 1)
    assert run.task == "Check the invoice"
    call = ToolCall.objects.get(run=run)
    assert call.tool == "http.get"
    assert call.args == {"args": [], "kwargs": {"url": "https://api.example"}}
    assert call.output == {"status": 200}
    assert run.stop_reason == "ok"
    assert run.would_stop_reason == ""  # http.get is allowed by the seed policy


def test_children_before_their_root_make_one_run_that_the_root_ends(agent):
    export(agent.key, "children_first.pb")

    run = run_of(8)
    assert run.status == RunStatus.RUNNING
    assert (run.steps, run.tool_calls) == (1, 1)
    assert "root span has not arrived" in run.task

    export(agent.key, "root_last.pb")

    assert Run.objects.count() == 1
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.task == "Late root"
    assert (run.steps, run.tool_calls) == (1, 1)
    assert run.events.filter(kind=EventKind.RUN_STARTED).count() == 1


def test_a_root_that_never_arrives_still_leaves_one_ended_run(agent):
    export(agent.key, "missing_root.pb")
    run = run_of(7)
    assert run.status == RunStatus.RUNNING

    assert observed_runs_finalize(quiet_seconds=300) == 0  # not quiet for long enough yet
    Run.objects.filter(pk=run.pk).update(last_activity_at=timezone.now() - timedelta(minutes=6))
    assert observed_runs_finalize(quiet_seconds=300) == 1

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.stop_reason == "ok"
    assert run.metadata["otlp"]["incomplete"] is True
    finish = run.events.get(kind=EventKind.FINISH)
    assert "root span never arrived" in finish.data["detail"]
    assert Run.objects.count() == 1


def test_traces_of_two_agents_are_two_runs(agent, outsider_agent):
    export(agent.key, "genai_legacy.pb")
    export(outsider_agent.key, "genai_legacy.pb")

    assert sorted(Run.objects.values_list("agent__name", flat=True)) == ["other-bot", "support-bot"]


def test_the_sweep_ends_rootless_runs_and_purges_old_spans(agent, settings):
    from agents.models import ObservedSpan
    from agents.telemetry.tasks import finalize_observed_runs

    settings.OPSCONSOLE_RETENTION_DAYS = 365  # the fixtures' spans are from 2026-09
    export(agent.key, "missing_root.pb")
    export(agent.key, "genai_legacy.pb")
    rootless, ended = run_of(7), run_of(2)
    Run.objects.filter(pk=rootless.pk).update(last_activity_at=timezone.now() - timedelta(hours=1))
    Run.objects.filter(pk=ended.pk).update(ended_at=timezone.now() - timedelta(days=366))

    assert finalize_observed_runs() == 1

    rootless.refresh_from_db()
    assert rootless.status == RunStatus.SUCCEEDED
    assert not ObservedSpan.objects.filter(run=ended).exists()
    assert ObservedSpan.objects.filter(run=rootless).count() == 2
    assert Run.objects.get(pk=ended.pk).steps == 1  # the run and its counters stay


def one_span_batches(name: str) -> list[tuple[int, bytes]]:
    """A fixture's spans, one export request each, with each span's start time."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(fixture(name))
    batches = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                single = ExportTraceServiceRequest()
                part = single.resource_spans.add()
                part.resource.CopyFrom(resource_spans.resource)
                scope = part.scope_spans.add()
                scope.scope.CopyFrom(scope_spans.scope)
                scope.spans.append(span)
                batches.append((span.start_time_unix_nano, single.SerializeToString()))
    return batches


# genai_latest's timeline sent as one batch (see the first test of this file).
IN_ORDER = [
    EventKind.RUN_STARTED,
    EventKind.STEP,
    EventKind.TOOL_CALL,
    EventKind.TOOL_RESULT,
    EventKind.TOOL_CALL,
    EventKind.TOOL_RESULT,
    EventKind.STEP,
    EventKind.FINISH,
]


@pytest.mark.parametrize("root", ["first", "last"])
def test_the_timeline_is_in_the_spans_time_order_when_batches_arrive_in_reverse(
    agent, oncall, root
):
    batches = sorted(one_span_batches("genai_latest.pb"), reverse=True)  # latest start first
    root_batch = batches.pop()  # the root starts first
    batches = [root_batch, *batches] if root == "first" else [*batches, root_batch]
    for _, body in batches:
        assert export(agent.key, body=body, content_type=PROTOBUF).status_code == 200

    run = run_of(1)
    events, _ = run_trace_page(run=run)  # what the run's page shows, in id order
    assert [event.kind for event in events] == IN_ORDER
    times = [event.at for event in events]
    assert times == sorted(times)
    assert times[0] == run.started_at == datetime.fromtimestamp(root_batch[0] / 1e9, UTC)
    assert [e.data["tool"] for e in events if e.kind == EventKind.TOOL_CALL] == [
        "kb.read",
        "email.send",
    ]
    assert [e.data["tokens_in"] for e in events if e.kind == EventKind.STEP] == [1200, 1400]
    # Nothing lost or doubled by the reordering; the run is judged as if sent at once.
    assert run.events.count() == len(IN_ORDER)
    assert (run.steps, run.tool_calls, run.status) == (2, 2, RunStatus.SUCCEEDED)
    assert run.would_stop_reason == "tool_denied:email.send"
    page = logged_in(oncall).get(f"/runs/{run.pk}/").content.decode()
    assert page.index("<code>kb.read</code>") < page.index("<code>email.send</code>")


def test_a_batch_in_time_order_rewrites_no_stored_event(agent):
    batches = sorted(one_span_batches("genai_latest.pb"))
    for _, body in batches[:3]:  # the root, the first model call, kb.read
        export(agent.key, body=body, content_type=PROTOBUF)
    ids = list(run_of(1).events.order_by("id").values_list("id", flat=True))

    export(agent.key, body=batches[3][1], content_type=PROTOBUF)  # email.send, later

    after = list(run_of(1).events.order_by("id").values_list("id", flat=True))
    assert after[: len(ids) - 1] == ids[:-1]  # all but the finish, which stays last
    assert run_of(1).events.order_by("-id").first().kind == EventKind.FINISH
