"""Tool names are bounded at the API (the MCP convention: 1-128 characters of [A-Za-z0-9_.-]),
and every denial built from one fits the columns that record it (issue 12, item 7)."""

from __future__ import annotations

import re

import pytest

from agents import stop_reasons
from agents.gateway import serializers, services
from agents.models import Run, ToolBreaker, ToolCall
from agents.policy import document
from approvals.models import ApprovalRequest
from opsconsole.errors import Invalid

pytestmark = pytest.mark.django_db


def ask(agent, run_id, tool):
    return agent.api.post_json(f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": {}})


def test_every_per_tool_stop_reason_of_the_longest_name_fits_its_columns():
    longest = "t" * document.MAX_TOOL_NAME
    for kind in stop_reasons.PER_TOOL:
        reason = stop_reasons.for_tool(kind, longest)
        assert stop_reasons.is_valid(reason)
        assert len(reason) <= Run._meta.get_field("stop_reason").max_length, kind
        assert len(reason) <= ToolCall._meta.get_field("stop_reason").max_length, kind
    for model in (ToolCall, ApprovalRequest, ToolBreaker):
        assert model._meta.get_field("tool").max_length >= document.MAX_TOOL_NAME, model


def test_the_api_and_the_policy_accept_the_same_names():
    assert serializers.TOOL_NAME == document.TOOL_NAME_PATTERN
    field = serializers.ToolCallCreateSerializer().fields["tool"]
    assert field.max_length == document.MAX_TOOL_NAME


@pytest.mark.parametrize("length", [129, 188, 200, 201, 5000])
def test_a_name_longer_than_128_is_a_400_and_the_run_goes_on(agent, start_run, length):
    run = start_run()

    response = ask(agent, run["id"], "t" * length)

    assert response.status_code == 400, response.content
    assert response.json()["error"] == "malformed"
    assert Run.objects.get(pk=run["id"]).status == "running"
    assert not ToolCall.objects.filter(run_id=run["id"]).exists()


@pytest.mark.parametrize("name", ["", "a b", "kb/read", "kb.", ".kb", "kb..read", "é.read"])
def test_names_outside_the_convention_are_a_400(agent, start_run, name):
    run = start_run()
    assert ask(agent, run["id"], name).status_code == 400


def test_the_longest_name_that_is_not_allowed_is_denied_and_recorded(agent, start_run):
    run = start_run()
    name = "x." + "y" * (document.MAX_TOOL_NAME - 2)

    response = ask(agent, run["id"], name)

    assert response.status_code == 200, response.content
    assert (response.json()["decision"], response.json()["stop_reason"]) == (
        "stop",
        f"tool_denied:{name}",
    )
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason) == ("stopped", f"tool_denied:{name}")
    assert ToolCall.objects.get(run=db_run).stop_reason == f"tool_denied:{name}"


def test_the_service_refuses_a_name_no_column_could_record(agent, start_run):
    """A second front door calling the use case directly gets the same bound."""
    run = start_run()
    with pytest.raises(Invalid):
        services.tool_call_decide(agent=agent.agent, run_id=run["id"], tool="t" * 129, args={})
    assert Run.objects.get(pk=run["id"]).status == "running"


def test_the_pattern_is_the_mcp_alphabet():
    pattern = re.compile(document.TOOL_NAME_PATTERN)
    assert pattern.match("search.read")
    assert pattern.match("A-Z_09.x-y")
    assert not pattern.match("kb:read")
