"""The MCP servers page (under Policy): registered upstreams, the tools they list with the effect
their annotations suggest, and tool definitions that changed upstream, held until an admin
accepts them. Upstreams themselves are registered in the policy YAML (``mcp.servers``)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents.mcp import selectors, services
from agents.policy.selectors import policy_current
from opsconsole import roles
from opsconsole.audit import actor_name
from opsconsole.decorators import role_required
from opsconsole.errors import ServiceError


@role_required(roles.ONCALL)
@require_GET
def mcp_servers(request: HttpRequest) -> HttpResponse:
    policy = policy_current()
    return render(
        request,
        "mcp/servers.html",
        {"policy": policy, "upstreams": selectors.mcp_upstreams(policy=policy)},
    )


@role_required(roles.ADMIN)
@require_POST
def mcp_tool_accept(request: HttpRequest, tool: str) -> HttpResponse:
    try:
        services.mcp_tool_accept(tool=tool, actor=actor_name(request.user))
    except ServiceError as error:
        messages.error(request, str(error.detail))
        return redirect("mcp:servers")
    messages.success(request, f"{tool}: its new definition is accepted; agents may call it again.")
    return redirect("mcp:servers")
