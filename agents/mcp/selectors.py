"""Reads for the MCP servers page: the upstreams the policy registers and the tools seen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.models import McpToolSeen
from agents.policy.document import Policy, ToolRule


@dataclass(frozen=True)
class SeenTool:
    row: McpToolSeen
    allowed: bool
    rule: ToolRule
    defined: bool  # the policy has a definition of its own (else the name decides its effect)


@dataclass(frozen=True)
class UpstreamView:
    name: str
    config: dict[str, Any]
    tools: list[SeenTool]

    @property
    def transport(self) -> str:
        return self.config.get("url") or " ".join(self.config.get("command", []))

    @property
    def held(self) -> int:
        return sum(1 for tool in self.tools if tool.row.held)


def mcp_upstreams(*, policy: Policy) -> list[UpstreamView]:
    """Every registered upstream (and any server seen before it was removed), with its tools."""
    seen: dict[str, list[McpToolSeen]] = {}
    for row in McpToolSeen.objects.all():
        seen.setdefault(row.server, []).append(row)
    definitions = policy.document["tools"]["definitions"]
    views = []
    for name in sorted(set(policy.mcp_servers) | set(seen)):
        tools = [
            SeenTool(
                row=row,
                allowed=row.tool in policy.document["tools"]["allow"],
                rule=policy.tool_rule(row.tool),
                defined=row.tool in definitions,
            )
            for row in seen.get(name, [])
        ]
        views.append(UpstreamView(name, policy.mcp_servers.get(name, {}), tools))
    return views
