"""A real upstream MCP server for the tests and bench/mcp.py, on the official SDK's low-level
``Server``: over Streamable HTTP (both protocol eras) or stdio.

    python -m tests.mcp.upstream --dir DIR --port PORT     # http://127.0.0.1:PORT/mcp
    python -m tests.mcp.upstream --dir DIR --port PORT --handshake-only [--json]
    python -m tests.mcp.upstream --dir DIR --stdio

``--handshake-only`` is a server of the 2025-11-25 era alone: it refuses the 2026-07-28 era's
``server/discover`` (so a client falls back to ``initialize``) and keeps a session per client
(``Mcp-Session-Id``); ``--json`` answers calls with JSON instead of SSE.

Every executed call is appended to ``DIR/calls.jsonl`` (so a test can say a write ran exactly
once, or never); ``DIR/description.txt``, when present, replaces ``search``'s description (an
upstream changing a tool under the console).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server

SEARCH_OUTPUT = {
    "type": "object",
    "properties": {"hits": {"type": "array", "items": {"type": "string"}}},
    "required": ["hits"],
}


def build(directory: Path) -> Server[Any]:
    calls = directory / "calls.jsonl"

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        description_file = directory / "description.txt"
        description = (
            description_file.read_text() if description_file.exists() else "Search the docs."
        )
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name="search",
                    description=description,
                    input_schema={
                        "type": "object",
                        # 2026-07-28 clients mirror the query into an Mcp-Param-Query header
                        "properties": {"query": {"type": "string", "x-mcp-header": "Query"}},
                        "required": ["query"],
                    },
                    output_schema=SEARCH_OUTPUT,
                    annotations=types.ToolAnnotations(read_only_hint=True),
                ),
                types.Tool(
                    name="send",
                    description="Send a message (a write).",
                    input_schema={
                        "type": "object",
                        "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
                        "required": ["to", "body"],
                    },
                ),
                types.Tool(
                    name="dump",
                    description="Returns more than the console lets through.",
                    input_schema={"type": "object"},
                    annotations=types.ToolAnnotations(read_only_hint=True),
                ),
                types.Tool(
                    name="pinger",
                    description="Pings the client before it answers (a request back mid-call).",
                    input_schema={"type": "object"},
                    annotations=types.ToolAnnotations(read_only_hint=True),
                ),
                types.Tool(
                    name="admin_reset",
                    description="Never allowed by the tests' policies.",
                    input_schema={"type": "object"},
                    annotations=types.ToolAnnotations(destructive_hint=True),
                ),
            ]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        with calls.open("a") as log:
            log.write(json.dumps({"tool": params.name, "args": args}) + "\n")
        if params.name == "search":
            hits = [f"{args.get('query', '')}-{n}" for n in range(3)]
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=json.dumps({"hits": hits}))],
                structured_content={"hits": hits},
            )
        if params.name == "send":
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"sent to {args.get('to')}")]
            )
        if params.name == "pinger":
            await ctx.session.send_ping()  # the client must answer before this call can
            return types.CallToolResult(content=[types.TextContent(type="text", text="pong")])
        if params.name == "dump":
            return types.CallToolResult(
                content=[types.TextContent(type="text", text="x" * 200_000)]
            )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="done")], is_error=False
        )

    return Server("test-upstream", version="1", on_list_tools=list_tools, on_call_tool=call_tool)


def executed(directory: Path) -> list[dict[str, Any]]:
    """The calls the upstream executed, oldest first."""
    calls = directory / "calls.jsonl"
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines() if line]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--stdio", action="store_true")
    parser.add_argument("--handshake-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    server = build(options.dir)
    if options.stdio:
        from mcp.server.stdio import stdio_server

        async def serve() -> None:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())

        anyio.run(serve)
        return
    import uvicorn

    app: Any = server.streamable_http_app(
        stateless_http=not options.handshake_only, json_response=options.json
    )
    if options.handshake_only:
        app = _refusing_discover(app)
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning")


def _refusing_discover(app: Any) -> Any:
    """``app``, answering ``server/discover`` as a server that has no such method."""

    async def refusing(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = json.loads(body or b"{}")
        if isinstance(request, dict) and request.get("method") == "server/discover":
            error = {"code": types.METHOD_NOT_FOUND, "message": "Method not found"}
            payload = json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "error": error})
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            return await send({"type": "http.response.body", "body": payload.encode()})
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await app(scope, replay, send)

    return refusing


if __name__ == "__main__":
    main()
