"""A tool call's arguments are validated before its run row is locked (issue 12, item 5).

The result is used only at the argument check's place in SPEC.md's order; when the policy in
force changed between that check and the lock, the arguments are checked again inside.
"""

from __future__ import annotations

import pytest
from django.db import connection

from agents.gateway import decisions, services
from agents.models import Run
from agents.monitoring.replay import replay_run
from agents.policy.selectors import policy_current

pytestmark = pytest.mark.django_db

SCHEMA = {
    "type": "object",
    "required": ["to"],
    "properties": {"to": {"type": "string"}},
}


def policy(args_schema=None, **budgets):
    definition = {"effect": "read"}
    if args_schema is not None:
        definition["args_schema"] = args_schema
    return {
        "tools": {"allow": ["kb.read", "mail.get"], "definitions": {"mail.get": definition}},
        "budgets": {"max_tool_calls": 15, "max_steps": 30, "max_seconds": 90, **budgets},
    }


def ask(agent, run_id, tool, args):
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args}
    )
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def watch(monkeypatch):
    """Record, for each argument validation, whether the run was locked and how deep the
    transactions were then; ``baseline`` is the test's own depth (pytest-django's)."""
    seen: list[dict] = []
    state = {"locked": False, "baseline": len(connection.atomic_blocks)}
    validate = decisions.schema_errors
    lock = services.run_lock_for_agent

    def recording_schema_errors(schema, value):
        if schema:
            seen.append(
                {
                    "locked": state["locked"],
                    "depth": len(connection.atomic_blocks) - state["baseline"],
                }
            )
        return validate(schema, value)

    def recording_lock(**kwargs):
        run = lock(**kwargs)
        state["locked"] = True
        return run

    monkeypatch.setattr(decisions, "schema_errors", recording_schema_errors)
    monkeypatch.setattr(services, "run_lock_for_agent", recording_lock)

    def reset():
        seen.clear()
        state["locked"] = False

    return seen, reset


def test_arguments_are_validated_before_the_lock_and_outside_the_transaction(
    agent, start_run, publish_policy, watch
):
    seen, reset = watch
    publish_policy(policy(SCHEMA))
    run = start_run()
    ask(agent, run["id"], "kb.read", {})  # the gateway has seen the policy in force
    reset()

    allowed = ask(agent, run["id"], "mail.get", {"to": "a@example.com"})
    assert allowed["decision"] == "allow"
    assert seen == [{"locked": False, "depth": 0}]
    reset()

    refused = ask(agent, run["id"], "mail.get", {"to": 7})
    assert (refused["decision"], refused["stop_reason"]) == ("stop", "invalid_tool_args:mail.get")
    assert "to" in refused["detail"]
    assert seen == [{"locked": False, "depth": 0}]


def test_a_policy_published_between_the_check_and_the_lock_is_the_one_applied(
    agent, start_run, publish_policy, monkeypatch, watch
):
    seen, reset = watch
    publish_policy(policy())  # mail.get takes anything
    run = start_run()
    ask(agent, run["id"], "kb.read", {})
    reset()
    locked = services.run_lock_for_agent

    def publish_then_lock(**kwargs):
        publish_policy(policy(SCHEMA), reason="stricter")
        return locked(**kwargs)

    monkeypatch.setattr(services, "run_lock_for_agent", publish_then_lock)

    refused = ask(agent, run["id"], "mail.get", {})

    assert refused["stop_reason"] == "invalid_tool_args:mail.get"
    assert Run.objects.get(pk=run["id"]).stop_reason == "invalid_tool_args:mail.get"
    assert seen and seen[-1]["locked"]  # checked again inside, against the new rule


def test_the_precomputed_result_keeps_its_place_in_the_order(
    agent, start_run, publish_policy, watch
):
    """Bad arguments on the call that breaks max_tool_calls: max_tool_calls comes first."""
    publish_policy(policy(SCHEMA, max_tool_calls=1))
    run = start_run()
    assert ask(agent, run["id"], "mail.get", {"to": "x"})["decision"] == "allow"

    refused = ask(agent, run["id"], "mail.get", {"to": 7})

    assert refused["stop_reason"] == "max_tool_calls"


def test_a_denied_tool_is_denied_before_its_arguments_matter(agent, start_run, publish_policy):
    publish_policy(policy(SCHEMA) | {"agents": {agent.agent.name: {"allow": ["kb.read"]}}})
    run = start_run()
    assert ask(agent, run["id"], "mail.get", {"to": 7})["stop_reason"] == "tool_denied:mail.get"


def test_replay_decides_the_arguments_as_the_gateway_did(agent, start_run, publish_policy):
    publish_policy(policy(SCHEMA))
    run = start_run()
    ask(agent, run["id"], "mail.get", {"to": "a"})
    ask(agent, run["id"], "mail.get", {"to": 7})

    result = replay_run(Run.objects.get(pk=run["id"]), policy_current())

    assert result.new_stop_reason == "invalid_tool_args:mail.get"
    assert not result.changed, result.differences()
