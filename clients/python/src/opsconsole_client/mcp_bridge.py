"""``opsconsole-mcp``: a stdio MCP server that forwards to the console's MCP endpoint, for hosts
that only launch stdio servers (``pip install 'agent-ops-console-client[mcp]'``).

    OPSCONSOLE_URL=https://console.example.com OPSCONSOLE_AGENT_KEY=aok_... opsconsole-mcp

The host sees the tools the console lets this agent call (``<server>.<tool>``); every call is
decided by the console as if the host had connected to ``/mcp`` itself. One bridge process is one
MCP session, so one run; ``--run NAME`` (or ``OPSCONSOLE_RUN``) names the run instead, and
``--client NAME`` picks the console's approval-hold profile (e.g. ``claude-code``). The key is read
from the environment only, never from the command line (where ``ps`` would show it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server


def endpoint(url: str) -> str:
    """The console's MCP endpoint from its base URL (``/mcp`` added unless it is there)."""
    url = url.rstrip("/")
    return url if url.endswith("/mcp") else f"{url}/mcp"


def build(url: str, key: str, *, run: str = "", client_name: str = "opsconsole-mcp") -> Server[Any]:
    headers = {"Authorization": f"Bearer {key}"}
    if run:
        headers["Opsconsole-Run"] = run

    @asynccontextmanager
    async def lifespan(server: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=None))
        async with (
            http,
            Client(
                streamable_http_client(endpoint(url), http_client=http),
                mode="legacy",  # a session of its own: the bridge's run
                client_info=types.Implementation(name=client_name, version="1"),
                cache=None,
            ) as console,
        ):
            yield {"console": console}

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        console: Client = ctx.lifespan_context["console"]
        return await console.list_tools(cursor=params.cursor if params else None)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        console: Client = ctx.lifespan_context["console"]

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        return await console.call_tool(
            params.name, params.arguments or {}, progress_callback=progress
        )

    return Server(
        "opsconsole-mcp",
        version="1",
        lifespan=lifespan,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="opsconsole-mcp", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("OPSCONSOLE_URL", ""))
    parser.add_argument("--run", default=os.environ.get("OPSCONSOLE_RUN", ""))
    parser.add_argument(
        "--client", default=os.environ.get("OPSCONSOLE_CLIENT_NAME", "opsconsole-mcp")
    )
    options = parser.parse_args(argv)
    key = os.environ.get("OPSCONSOLE_AGENT_KEY", "")
    if not options.url or not key:
        sys.exit("Set OPSCONSOLE_URL (or --url) and OPSCONSOLE_AGENT_KEY.")
    server = build(options.url, key, run=options.run, client_name=options.client)

    async def serve() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(serve)


if __name__ == "__main__":
    main()
