"""Reads an agent makes through the gateway: only its own runs and tool calls."""

from __future__ import annotations

from agents.models import (
    Agent,
    Run,
    ToolCall,
)
from opsconsole.errors import NotFound


def run_get_for_agent(*, agent: Agent, run_id: int) -> Run:
    """An agent sees only its own runs: another agent's run is a 404."""
    run = Run.objects.select_related("agent").filter(pk=run_id, agent=agent).first()
    if run is None:
        raise NotFound(f"No run {run_id} for this agent.")
    return run


def tool_call_get_for_agent(*, agent: Agent, tool_call_id: int) -> ToolCall:
    tool_call = (
        ToolCall.objects.select_related("run", "run__agent", "approval")
        .filter(pk=tool_call_id, run__agent=agent)
        .first()
    )
    if tool_call is None:
        raise NotFound(f"No tool call {tool_call_id} for this agent.")
    return tool_call
