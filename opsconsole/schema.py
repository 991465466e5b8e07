"""OpenAPI extras: the bearer scheme, and the async long-poll view DRF cannot introspect."""

from __future__ import annotations

import json

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerKeyScheme(OpenApiAuthenticationExtension):
    target_class = "opsconsole.authentication.BearerKeyAuthentication"
    name = "bearerKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An agent key (aok_...) or a person's API token (aou_...).",
        }


def add_long_poll_path(result, generator, request, public):
    """Document GET /api/v1/tool-calls/{id}?wait=N (an async Django view)."""
    result["paths"]["/api/v1/tool-calls/{tool_call_id}"] = {
        "get": {
            "operationId": "tool_call_get",
            "tags": ["agent"],
            "summary": "A tool call's decision; waits up to `wait` seconds for a pending approval.",
            "security": [{"bearerKey": []}],
            "parameters": [
                {
                    "name": "tool_call_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer"},
                },
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "minimum": 0, "maximum": 30},
                },
            ],
            "responses": {
                "200": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ToolCall"}}
                    },
                    "description": "",
                },
                "400": {"description": "wait out of range"},
                "401": {"description": "no or bad key"},
                "404": {"description": "not this agent's tool call"},
                "503": {"description": "the control plane cannot decide: treat as a stop"},
            },
        }
    }
    return result


ERROR_SCHEMA = {
    "type": "object",
    "description": 'The one error shape: {"error": "<code>", "detail": ...}, with a code\'s own '
    "fields when it has them.",
    "required": ["error", "detail"],
    "properties": {
        "error": {
            "type": "string",
            "description": "a stable code: malformed, unauthenticated, forbidden, not_found, "
            "method_not_allowed, rate_limited, payload_too_large, args_too_large, "
            "control_plane_unavailable, run_stopped, run_ended, idempotency_conflict, "
            "already_decided, invalid_policy, policy_changed, agent_exists, invalid_name, ...",
        },
        "detail": {
            "description": "what went wrong, for people: a sentence, a list of problems, or "
            "the invalid fields and their problems"
        },
        "stop_reason": {
            "allOf": [{"$ref": "#/components/schemas/StopReason"}],
            "description": "a refusal that stops (or found stopped) the run: why",
        },
        "status": {
            "type": "string",
            "description": "an approval request's status, when the conflict is about it",
        },
        "limit_bytes": {"type": "integer", "description": "args_too_large: the cap"},
        "size_bytes": {"type": "integer", "description": "args_too_large: the size sent"},
    },
    "additionalProperties": True,
}
ERROR_MEANINGS = {
    "400": "malformed request (bad JSON, missing or invalid fields)",
    "401": "no key, or an unknown or revoked key",
    "403": "the key's owner may not do this (wrong kind of caller or role)",
    "404": "no such object for this caller (another agent's objects are 404 too)",
    "409": "conflict: the run already ended, the request was already decided, an idempotency "
    "key reused with other content",
    "413": "payload too large (body, or a tool call's args: args_too_large)",
    "422": "fails validation",
    "429": "rate limited: retry after Retry-After seconds",
    "503": "the control plane cannot decide: treat as a stop",
}
# What an error means on one operation, where it says more than ERROR_MEANINGS.
OPERATION_ERRORS = {
    ("run_create", "409"): "the run is refused before it starts (kill switch stop_all, agent "
    "disabled): `stop_reason` says why; or an idempotency key reused with other content",
    ("run_list", "400"): "a filter, `limit` or `after` is not valid (`detail` names it)",
    ("agent_create", "409"): "`agent_exists`: an agent has that name",
    ("agent_create", "422"): "`invalid_name`: not 1-100 letters, digits, - or _",
    ("agent_set_enabled", "400"): "disabling without a `reason`",
    ("policy_publish", "400"): "`invalid_policy`: the YAML or the policy is not valid; `detail` "
    "lists the problems, as the policy editor shows them; or `malformed` (no reason, no "
    "base_version)",
    ("policy_publish", "409"): "`policy_changed`: another version was published since "
    "`base_version`; nothing was saved",
    ("policy_dry_run", "400"): "`invalid_policy`: the draft is not valid; `detail` lists the "
    "problems, as the policy editor shows them",
}
RATE_LIMITED_OPERATIONS = {"run_create", "tool_call_create"}


def add_error_responses(result, generator, request, public):
    """Declare the error answers each API operation can give, in the one error shape; and what
    every answer holds: a response object carries every field its serializer declares."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/") or path.startswith("/api/v1/schema"):
            continue
        for method, operation in operations.items():
            codes = ["400", "401", "403", "503"]
            if "{" in path:
                codes.append("404")
            if method in ("post", "put"):
                codes += ["409", "413", "422"]
            if operation.get("operationId") in RATE_LIMITED_OPERATIONS:
                codes.append("429")
            responses = operation.setdefault("responses", {})
            for code in codes:
                meaning = OPERATION_ERRORS.get((operation.get("operationId"), code))
                response = responses.setdefault(
                    code, {"description": meaning or ERROR_MEANINGS[code]}
                )
                response.setdefault(
                    "content",
                    {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                )
                if code == "429":
                    response["headers"] = {
                        "Retry-After": {
                            "schema": {"type": "integer"},
                            "description": "seconds until the limit lifts",
                        }
                    }
    _require_every_answer_field(result)
    return result


def _require_every_answer_field(result) -> None:
    """Optional where the server says so, always there where it always is.

    DRF writes every declared field of an output serializer, so in an answer's schema each
    property is required (a generated client types ``run.status`` as always there). In a request
    shape (``...Request``, COMPONENT_SPLIT_REQUEST) a field the server defaults is optional; its
    default moves into the description, because generators such as openapi-typescript read
    ``default`` as "always present" and would make every caller send it (``agent_version``)."""
    for name, schema in result["components"]["schemas"].items():
        if name == "Error" or "properties" not in schema:
            continue
        if not name.endswith("Request"):
            schema["required"] = sorted(schema["properties"])
            continue
        required = set(schema.get("required", ()))
        for field, prop in schema["properties"].items():
            if field in required or "default" not in prop:
                continue
            default = prop.pop("default")
            note = (
                f"Optional; the server uses {json.dumps(default, default=str)} when it is left out."
            )
            prop["description"] = (
                f"{prop['description']} {note}" if prop.get("description") else note
            )


def _link(operation_id: str, parameter: str, source: str) -> dict:
    return {"operationId": operation_id, "parameters": {parameter: f"$response.body#/{source}"}}


# What a client does next with an answer (OpenAPI links): used by clients, docs and stateful
# fuzzing (schemathesis follows them, so calls after the first hit real objects).
LINKS = {
    ("run_create", "201"): {
        "GetRun": _link("run_get", "run_id", "id"),
        "RecordStep": _link("step_create", "run_id", "id"),
        "DecideToolCall": _link("tool_call_create", "run_id", "id"),
        "FinishRun": _link("run_finish", "run_id", "id"),
        "CancelRun": _link("run_cancel", "run_id", "id"),
    },
    ("tool_call_create", "200"): {
        "ReportResult": _link("tool_call_result", "tool_call_id", "id"),
        "PollToolCall": _link("tool_call_get", "tool_call_id", "id"),
        "GetRun": _link("run_get", "run_id", "run/id"),
    },
    ("approval_list", "200"): {
        "DecideApproval": _link("approval_decide", "request_id", "results/0/id"),
    },
}


def add_links(result, generator, request, public):
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for (operation_id, code), links in LINKS.items():
                if operation.get("operationId") == operation_id and code in operation.get(
                    "responses", {}
                ):
                    operation["responses"][code]["links"] = links
    return result
