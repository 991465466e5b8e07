"""OpenAPI extras: the bearer scheme, and the async long-poll view DRF cannot introspect."""

from __future__ import annotations

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
