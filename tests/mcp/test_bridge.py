"""``opsconsole-mcp``, the client package's stdio bridge: a host that only launches stdio servers
gets the console's decisions, its run named as it asks."""

from __future__ import annotations

import asyncio
import os
import sys

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from agents.models import Run
from tests.mcp.conftest import decision_of, text_of


def test_the_stdio_bridge_forwards_to_the_console(console, agent, upstream):
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "opsconsole_client.mcp_bridge", "--run", "from-the-bridge"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.pathsep.join(sys.path),
            "OPSCONSOLE_URL": console.url.removesuffix("/mcp"),
            "OPSCONSOLE_AGENT_KEY": agent.key,
        },
    )

    async def scenario():
        async with Client(parameters, mode="legacy", cache=None) as client:
            listed = await client.list_tools()
            allowed = await client.call_tool("up.search", {"query": "bridge"})
            denied = await client.call_tool("up.admin_reset", {})
            return {tool.name for tool in listed.tools}, allowed, denied

    names, allowed, denied = asyncio.run(scenario())
    assert names == {"up.search", "up.send", "up.dump"}
    assert allowed.structured_content == {"hits": ["bridge-0", "bridge-1", "bridge-2"]}
    assert denied.is_error is True and text_of(denied).startswith("REFUSED")
    assert decision_of(denied)["stop_reason"] == "tool_denied:up.admin_reset"
    assert Run.objects.get().task == "MCP: from-the-bridge"
    assert upstream.executed() == [{"tool": "search", "args": {"query": "bridge"}}]
