"""The gateway's fast path (agents/gateway/core.py): on PostgreSQL it answers a plain allowed call
itself, exactly as Django would (answer, headers, rows, live update, counters); anything else,
and everything on SQLite, is Django's."""

from __future__ import annotations

import pytest
from django.db import connection

from agents.gateway import core
from agents.gateway.metrics import REGISTRY
from agents.models import Agent, ToolCall, TraceEvent
from tests.gateway import test_core_contract as contract
from tests.gateway.test_core_contract import (  # noqa: F401 - the fixture routes tool calls
    _original_post_json,
    _tool_calls_through_the_asgi_application,
)

pytestmark = pytest.mark.django_db

ON_POSTGRESQL = connection.vendor == "postgresql"

POLICY = """
tools:
  allow: ["kb.read", "vendor.quote.get"]
  definitions:
    vendor.quote.get: {effect: read, cost_usd: 0.25}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15, max_usd: 10, max_tokens: 100000}
"""


def outcomes() -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for metric in REGISTRY.collect()
        if metric.name == "opsconsole_gateway_fast_path"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def served_by_fast_path(before: dict[str, float]) -> bool:
    return outcomes().get("served", 0) > before.get("served", 0)


def fallback_reasons(before: dict[str, float]) -> set[str]:
    after = outcomes()
    return {name for name, value in after.items() if value > before.get(name, 0)} - {"served"}


def slow_call(persona, run_id: int, body: dict):
    """Straight to Django (the test client), as before the fast path."""
    return _original_post_json(persona.api, f"/api/v1/runs/{run_id}/tool-calls", body)


def test_the_fast_path_is_on_exactly_on_postgresql():
    assert (core.fast_path_problems() == []) == ON_POSTGRESQL


def test_fast_and_slow_paths_answer_record_and_push_the_same(
    agent, start_run, publish_policy, monkeypatch
):
    publish_policy(POLICY)
    pushed: list[dict] = []

    async def record_push(outcome):
        pushed.append(outcome.broadcast)

    monkeypatch.setattr(core, "broadcast_run", record_push)
    monkeypatch.setattr(
        "agents.runs.services.broadcast_many",
        lambda updates: pushed.extend(p for _, event, p in updates if event == "run.updated"),
    )
    slow_run, fast_run = start_run()["id"], start_run()["id"]
    pushed.clear()
    body = {"tool": "vendor.quote.get", "args": {"sku": "A-1"}, "idempotency_key": "k1"}
    slow = slow_call(agent, slow_run, body)
    before = outcomes()
    fast = agent.api.post_json(f"/api/v1/runs/{fast_run}/tool-calls", body)

    assert served_by_fast_path(before) == ON_POSTGRESQL
    assert (slow.status_code, fast.status_code) == (200, 200)
    slow_answer, fast_answer = slow.json(), fast.json()
    for answer in (slow_answer, fast_answer):
        answer.pop("id")
        answer["run"].pop("id")
        answer["run"].pop("started_at")
        answer["run"]["usage"].pop("seconds")
    assert fast_answer == slow_answer
    assert fast_answer["decision"] == "allow" and fast_answer["run"]["usage"]["usd"] == 0.25

    def recorded(run_id: int):
        call = ToolCall.objects.get(run_id=run_id)
        fields = {
            f.attname: getattr(call, f.attname)
            for f in ToolCall._meta.concrete_fields
            if f.attname not in {"id", "run_id", "created_at"}
        }
        event = TraceEvent.objects.get(run_id=run_id, kind="tool_call")
        data = {**event.data, "tool_call_id": None}
        return fields, data, event.tool_call_id == call.pk

    assert recorded(fast_run) == recorded(slow_run)
    assert len(pushed) == 2
    for push in pushed:
        push.pop("id")
        push["usage"].pop("seconds")
    assert pushed[0] == pushed[1]


def test_the_fast_answer_carries_djangos_headers(agent, start_run):
    run = start_run()["id"]
    slow = slow_call(agent, run, {"tool": "kb.read", "args": {"i": 1}})
    fast = agent.api.post_json(f"/api/v1/runs/{run}/tool-calls", {"tool": "kb.read", "args": {}})
    ignore = {"content-length", "date", "server"}
    assert {k.lower(): v for k, v in fast.headers.items() if k.lower() not in ignore} == {
        k.lower(): v for k, v in slow.headers.items() if k.lower() not in ignore
    }


def test_https_only_deployments_redirect_plain_http_and_send_hsts(
    agent, start_run, settings, monkeypatch
):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    monkeypatch.setattr(contract, "_APPLICATION", [])  # Django's middleware reads the settings
    # Runs start through Django, over https too.
    run = _original_post_json(
        agent.api, "/api/v1/runs", {"task": "t"}, HTTP_X_FORWARDED_PROTO="https"
    ).json()["id"]
    path = f"/api/v1/runs/{run}/tool-calls"
    before = outcomes()
    plain = agent.api.post_json(path, {"tool": "kb.read", "args": {}})
    assert plain.status_code == 301
    assert plain["Location"].startswith("https://")
    assert "insecure" in fallback_reasons(before) or not ON_POSTGRESQL
    before = outcomes()
    secure = agent.api.post_json(
        path, {"tool": "kb.read", "args": {}}, HTTP_X_FORWARDED_PROTO="https"
    )
    assert secure.status_code == 200 and secure.json()["decision"] == "allow"
    assert served_by_fast_path(before) == ON_POSTGRESQL
    assert secure["Strict-Transport-Security"] == "max-age=3600; includeSubDomains"
    assert ToolCall.objects.filter(run_id=run).count() == 1


def test_the_rate_limit_counts_calls_on_both_paths_in_one_window(
    agent, start_run, settings, rate_clock
):
    settings.OPSCONSOLE_RATE_LIMITS = {**settings.OPSCONSOLE_RATE_LIMITS, "tool_calls": "3/min"}
    run = start_run()["id"]
    path = f"/api/v1/runs/{run}/tool-calls"
    first = slow_call(agent, run, {"tool": "kb.read", "args": {"i": 1}})
    before = outcomes()
    second = agent.api.post_json(path, {"tool": "kb.read", "args": {"i": 2}})
    third = agent.api.post_json(path, {"tool": "kb.read", "args": {"i": 3}})
    assert served_by_fast_path(before) == ON_POSTGRESQL
    fourth = agent.api.post_json(path, {"tool": "kb.read", "args": {"i": 4}})
    fifth = slow_call(agent, run, {"tool": "kb.read", "args": {"i": 5}})
    assert [r.status_code for r in (first, second, third, fourth, fifth)] == [
        200,
        200,
        200,
        429,
        429,
    ]
    assert fourth.json()["error"] == "rate_limited" and fourth["Retry-After"]
    assert ToolCall.objects.filter(run_id=run).count() == 3


def test_an_agent_in_observe_mode_is_answered_by_django(agent, start_run, monkeypatch):
    run = start_run()["id"]
    Agent.objects.filter(pk=agent.agent.pk).update(mode="observe")
    before = outcomes()
    answer = agent.api.post_json(
        f"/api/v1/runs/{run}/tool-calls", {"tool": "browser.open", "args": {}}
    )
    assert answer.status_code == 200
    assert not served_by_fast_path(before)
    if ON_POSTGRESQL:
        assert "observe" in fallback_reasons(before)


def test_a_field_the_fast_path_does_not_know_turns_it_off(monkeypatch):
    monkeypatch.setattr(core, "KNOWN_RUN_FIELDS", core.KNOWN_RUN_FIELDS - {"task"})
    assert any(
        "Run has fields the fast path does not know: {'task'}" in p
        for p in core.fast_path_problems()
    )


def test_a_revoked_key_and_a_paused_agent_govern_the_next_fast_decision(agent, start_run):
    from agents.registry import services as registry

    run = start_run()["id"]
    path = f"/api/v1/runs/{run}/tool-calls"
    assert (
        agent.api.post_json(path, {"tool": "kb.read", "args": {"i": 1}}).json()["decision"]
        == "allow"
    )
    registry.agent_pause(agent=agent.agent, actor="user:olivia", by="olivia", reason="runaway")
    stopped = agent.api.post_json(path, {"tool": "kb.read", "args": {"i": 2}}).json()
    assert (stopped["decision"], stopped["stop_reason"]) == ("stop", "agent_disabled")
    registry.agent_key_revoke(key_id=agent.agent.keys.get().pk, actor="system")
    assert agent.api.post_json(path, {"tool": "kb.read", "args": {}}).status_code == 401
