"""The fast report (``core.report_steps``): the MCP front door records an upstream's plain, valid
success with it. It must record exactly what ``tool_call_report`` records, and hand every other
case to it. Its statements are PostgreSQL's (row locks, ``LATERAL``): on SQLite the MCP front
door never uses it (``core.problems()``), which tests/mcp covers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from agents.gateway import core
from agents.gateway.services import tool_call_report
from agents.models import BreakerState, PolicyVersion, Run, ToolBreaker, ToolCall, TraceEvent
from agents.policy.selectors import policy_current

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's statements"),
]

POLICY = """
tools:
  allow: ["kb.read", "kb.schema"]
  definitions:
    kb.schema:
      effect: read
      output_schema: {type: object, required: [hits], properties: {hits: {type: array}}}
      breaker: {window: 4, min_calls: 4, failure_rate: 0.5, cooldown_seconds: 30, trial_calls: 1}
budgets: {max_steps: 30, max_seconds: 900, max_tool_calls: 50}
loop: {max_repeats: 50}
"""
OUTPUT = {"hits": ["refunds-0", "refunds-1"]}


@pytest.fixture
def calls(agent, start_run, publish_policy):
    """``calls(tool, n)``: n allowed calls of ``tool`` in fresh runs."""
    publish_policy(POLICY)

    def make(tool: str, n: int) -> list[ToolCall]:
        made = []
        for i in range(n):
            run = start_run()["id"]
            answer = agent.api.post_json(
                f"/api/v1/runs/{run}/tool-calls", {"tool": tool, "args": {"i": i}}
            ).json()
            assert answer["decision"] == "allow", answer
            made.append(ToolCall.objects.get(pk=answer["id"]))
        return made

    return make


def policy_in_force() -> tuple:
    """The policy the decision was made with, and its (number, created_at)."""
    latest = PolicyVersion.objects.order_by("-number").values_list("number", "created_at")[0]
    return policy_current(), tuple(latest)


def fast_report(agent, call: ToolCall, output=OUTPUT, decided_with=None) -> core.Outcome:
    policy, key = decided_with or policy_in_force()
    request = core.ReportRequest(
        tool_call_id=call.pk,
        run_id=call.run_id,
        agent_id=agent.agent.pk,
        agent_name=agent.agent.name,
        tool=call.tool,
        output=output,
        latency_ms=7,
        policy=policy,
        policy_key=key,
    )
    return core.report_sync(request, timezone.now())


def slow_report(agent, call: ToolCall, ok: bool = True, output=OUTPUT) -> None:
    tool_call_report(
        agent=agent.agent,
        tool_call_id=call.pk,
        ok=ok,
        output=output if ok else None,
        error="" if ok else "boom",
        latency_ms=7,
        usd=Decimal("0"),
    )


def recorded(call: ToolCall) -> tuple[dict, dict]:
    call.refresh_from_db()
    fields = {
        f.attname: getattr(call, f.attname)
        for f in ToolCall._meta.concrete_fields
        if f.attname not in {"id", "run_id", "created_at", "reported_at", "args", "args_hash"}
    }
    event = TraceEvent.objects.get(tool_call=call, kind="tool_result")
    return fields, {**event.data, "tool_call_id": None}


def test_the_fast_report_records_what_tool_call_report_records(agent, calls):
    first, slow, fast = calls("kb.schema", 3)
    slow_report(agent, first)  # the tool's breaker row exists from its first report
    before = Run.objects.get(pk=fast.run_id).last_activity_at
    slow_report(agent, slow)
    breaker_after_slow = ToolBreaker.objects.get(tool="kb.schema").failure_rate
    outcome = fast_report(agent, fast)

    assert recorded(fast) == recorded(slow)
    assert recorded(fast)[0]["valid"] is True and recorded(fast)[0]["output"] == OUTPUT
    assert ToolBreaker.objects.get(tool="kb.schema").failure_rate == breaker_after_slow == 0.0
    assert Run.objects.get(pk=fast.run_id).last_activity_at > before
    assert outcome.broadcast["id"] == fast.run_id and outcome.broadcast["status"] == "running"


def test_the_breaker_window_counts_this_result_with_the_earlier_ones(agent, calls):
    first, failed, fast = calls("kb.schema", 3)
    slow_report(agent, first)
    slow_report(agent, failed, ok=False)  # window so far: ok, failed
    fast_report(agent, fast)  # ok, failed, ok: a third failed
    breaker = ToolBreaker.objects.get(tool="kb.schema")
    assert breaker.failure_rate == pytest.approx(1 / 3)
    assert breaker.state == BreakerState.CLOSED


@pytest.mark.parametrize(
    "case, reason",
    [
        ("invalid_output", "invalid_output"),
        ("reported", "reported"),
        ("policy_changed", "policy_changed"),
        ("breaker_new", "breaker_new"),
        ("breaker_opens", "breaker_opens"),
        ("breaker_half_open", "breaker_half_open"),
    ],
)
def test_anything_but_the_plain_case_is_tool_call_reports(
    agent, calls, publish_policy, case, reason
):
    first, second, third, call = calls("kb.schema", 4)
    output = OUTPUT
    decided_with = None
    if case != "breaker_new":
        slow_report(agent, first)
    if case == "invalid_output":
        output = {"nothing": True}
    elif case == "reported":
        slow_report(agent, call)
    elif case == "policy_changed":
        decided_with = policy_in_force()
        publish_policy(POLICY.replace("max_steps: 30", "max_steps: 31"), reason="changed")
    elif case == "breaker_opens":
        slow_report(agent, second, ok=False)
        slow_report(agent, third, ok=False)  # ok, failed, failed + this one: 4 calls, half failed
    elif case == "breaker_half_open":
        ToolBreaker.objects.filter(tool="kb.schema").update(state=BreakerState.HALF_OPEN)
    events = TraceEvent.objects.count()
    with pytest.raises(core.Fallback) as fallback:
        fast_report(agent, call, output=output, decided_with=decided_with)
    assert fallback.value.reason == reason
    assert TraceEvent.objects.count() == events  # nothing written
    if case != "reported":
        assert ToolCall.objects.get(pk=call.pk).reported_at is None
