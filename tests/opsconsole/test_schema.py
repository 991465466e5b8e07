"""The OpenAPI schema says precisely what the API does: named enums for decisions and statuses,
the stop reasons' closed vocabulary as a pattern, optional request fields optional, answers'
fields always there, an error shape on every operation, the automation API included. (The
typed TypeScript client generated from it is compiled by .ci/openapi-typescript.)"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from agents import stop_reasons
from agents.models import Decision, RunStatus

AUTOMATION = {
    ("get", "/api/v1/runs"): "run_list",
    ("get", "/api/v1/agents"): "agent_list",
    ("post", "/api/v1/agents"): "agent_create",
    ("get", "/api/v1/agents/{name}"): "agent_get",
    ("post", "/api/v1/agents/{name}/keys"): "agent_key_issue",
    ("put", "/api/v1/agents/{name}/enabled"): "agent_set_enabled",
    ("post", "/api/v1/agent-keys/{key_id}/revoke"): "agent_key_revoke",
    ("get", "/api/v1/policy"): "policy_get",
    ("post", "/api/v1/policy"): "policy_publish",
    ("post", "/api/v1/policy/dry-run"): "policy_dry_run",
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    response = Client().get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def component(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return schema["components"]["schemas"][name]


def ref_of(prop: dict[str, Any]) -> str | None:
    ref = prop.get("$ref") or next((p["$ref"] for p in prop.get("allOf", []) if "$ref" in p), None)
    return ref.rsplit("/", 1)[-1] if ref else None


def test_decisions_and_statuses_are_named_enums(schema):
    tool_call = component(schema, "ToolCall")["properties"]
    assert ref_of(tool_call["decision"]) == "ToolCallDecision"
    assert component(schema, "ToolCallDecision")["enum"] == list(Decision.values)
    assert ref_of(component(schema, "StepOutcome")["properties"]["decision"]) == "StepDecision"
    assert component(schema, "StepDecision")["enum"] == ["continue", "stop"]
    status = component(schema, "Run")["properties"]["status"]
    assert component(schema, ref_of(status))["enum"] == list(RunStatus.values)


def test_every_stop_reason_is_the_closed_vocabulary(schema):
    holders = [
        (name, prop)
        for name, shape in schema["components"]["schemas"].items()
        for field, prop in shape.get("properties", {}).items()
        if "stop_reason" in field
    ]
    assert {name for name, _ in holders} >= {"Run", "ToolCall", "StepOutcome", "ResultOutcome"}
    for name, prop in holders:
        assert ref_of(prop) == "StopReason", name
    assert component(schema, "Run")["properties"]["stop_reason"]["nullable"] is True

    stop_reason = component(schema, "StopReason")
    assert "<kind>:<tool>" in stop_reason["description"]
    pattern = re.compile(stop_reason["pattern"])
    valid = [*stop_reasons.PLAIN, *(f"{kind}:email.send" for kind in stop_reasons.PER_TOOL)]
    assert all(pattern.search(reason) for reason in valid)
    for invalid in ("tool_denied", "ok:email.send", "bored", "max_steps ", "tool_denied:"):
        assert not pattern.search(invalid), invalid


def test_optional_request_fields_are_optional_and_carry_no_default(schema):
    run_create = component(schema, "RunCreateRequest")
    assert run_create["required"] == ["task"]
    assert "default" not in run_create["properties"]["agent_version"]
    assert "Optional" in run_create["properties"]["agent_version"]["description"]
    for name, shape in schema["components"]["schemas"].items():
        if name.endswith("Request"):
            for field, prop in shape.get("properties", {}).items():
                assert "default" not in prop or field in shape.get("required", []), (name, field)


def test_answers_always_carry_every_field(schema):
    run = component(schema, "Run")
    assert set(run["required"]) == set(run["properties"])
    assert {"status", "started_at", "agent_version"} <= set(run["required"])


def test_the_automation_api_is_in_the_schema_beside_run_creation(schema):
    for (method, path), operation_id in AUTOMATION.items():
        assert schema["paths"][path][method]["operationId"] == operation_id
    assert schema["paths"]["/api/v1/runs"]["post"]["operationId"] == "run_create"
    run_page = schema["paths"]["/api/v1/runs"]["get"]["responses"]["200"]["content"]
    assert ref_of(run_page["application/json"]["schema"]) == "RunPage"
    issued = component(schema, "AgentKeyIssued")
    assert (
        "key" in issued["required"] and "never again" in issued["properties"]["key"]["description"]
    )


def test_every_operation_declares_its_errors_in_the_one_shape(schema):
    error = component(schema, "Error")
    assert error["required"] == ["error", "detail"]
    assert ref_of(error["properties"]["stop_reason"]) == "StopReason"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for code in ("400", "401", "403", "503"):
                body = responses[code]["content"]["application/json"]["schema"]
                assert ref_of(body) == "Error", (method, path, code)
    publish = schema["paths"]["/api/v1/policy"]["post"]["responses"]
    assert "policy_changed" in publish["409"]["description"]
    assert "invalid_policy" in publish["400"]["description"]
    assert "Retry-After" in schema["paths"]["/api/v1/runs"]["post"]["responses"]["429"]["headers"]
