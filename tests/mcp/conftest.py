"""The MCP world: a real upstream MCP server (a child process, Streamable HTTP), the console's
own ASGI application (Django with ``/mcp`` beside it, as opsconsole/asgi.py mounts it) under
uvicorn on a thread of this process (so it shares the test database), and the official SDK's
client in either protocol era."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from asgiref.sync import sync_to_async
from django.db import connections
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agents.gateway import core
from agents.policy.document import normalise, parse_yaml
from opsconsole.devserver import ROOT, free_port

# The tests' own policy: the upstream "up" with its read (search), write (send) and a tool no
# policy allows (admin_reset); refusals refuse the call, three at most.
POLICY = """
tools:
  allow: ["up.search", "up.send", "up.dump"]
  definitions:
    up.search:
      effect: read
      breaker: {window: 4, min_calls: 2, failure_rate: 0.5, cooldown_seconds: 600}
      args_schema: {type: object, required: [query], properties: {query: {type: string}}}
      output_schema: {type: object, required: [hits]}
    up.send:
      effect: write
      approval: {required: true, timeout_seconds: 600}
    up.dump:
      effect: read
      max_output_bytes: 1000
budgets: {max_steps: 30, max_seconds: 600, max_tool_calls: 6}
writes: {require_approval: true}
refusals: {on_refusal: refuse_call, max_refusals: 3}
mcp:
  servers:
    up: {url: "UPSTREAM_URL", refresh_seconds: 0, timeout_seconds: 10}
  hold_seconds: {default: 20}
"""

MODES = {"handshake": "legacy", "stateless": "2026-07-28"}


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


class Upstream:
    """``tests/mcp/upstream.py`` over Streamable HTTP, as a child process."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        self.options = options  # tests/mcp/upstream.py's: --handshake-only, --json
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.mcp.upstream",
                "--dir",
                str(self.directory),
                "--port",
                str(self.port),
                *self.options,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def executed(self) -> list[dict[str, Any]]:
        from tests.mcp.upstream import executed

        return executed(self.directory)

    def reset(self) -> None:
        for name in ("calls.jsonl", "description.txt"):
            (self.directory / name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def upstream_server(tmp_path_factory) -> Iterator[Upstream]:
    upstream = Upstream(tmp_path_factory.mktemp("upstream"))
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture
def upstream(upstream_server) -> Upstream:
    if upstream_server.process is None or upstream_server.process.poll() is not None:
        upstream_server.start()
    upstream_server.reset()
    return upstream_server


class Console:
    """The console's ASGI app under uvicorn, on a thread with its own event loop."""

    def __init__(self) -> None:
        from django.core.asgi import get_asgi_application

        from agents.mcp.asgi import WithMcp

        self.app = WithMcp(get_asgi_application())
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())
        # Streams the server left open end here, not as "Task was destroyed" at collection.
        leftover = asyncio.all_tasks(self.loop)
        for task in leftover:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the console did not start"
            time.sleep(0.02)

    async def settled(self) -> None:
        """Wait until the results the console answered are recorded too (agents/mcp/server.py
        ``Recording``: a fast-path result is written just after its answer)."""
        from agents.mcp.server import Recording

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(Recording.settled(), self.loop))

    def stop(self) -> None:
        async def close() -> None:
            await self.app.mcp.close()
            await core.pool_close()
            await sync_to_async(connections.close_all)()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def console(transactional_db, upstream) -> Iterator[Console]:
    from agents.mcp import services

    services._runs.clear()
    publish(POLICY.replace("UPSTREAM_URL", upstream.url))
    server = Console()
    server.start()
    yield server
    server.stop()


def publish(text: str, reason: str = "test") -> None:
    from agents.policy.services import policy_publish

    policy_publish(document=parse_yaml(text), author="user:test", reason=reason)


def policy_with(**changes: Any) -> str:
    """The tests' policy (for the upstream at ``url``) with top-level sections replaced."""
    document = normalise(parse_yaml(POLICY))
    document.update(changes)
    return document


@contextlib.asynccontextmanager
async def mcp_client(
    console: Console,
    key: str,
    era: str,
    headers: dict[str, str] | None = None,
    read_timeout: float | None = 30,
    event_hooks: dict[str, list[Any]] | None = None,
) -> AsyncIterator[Client]:
    """The official SDK client in one protocol era, with the agent's key (``event_hooks`` see or
    change its HTTP requests and responses)."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=httpx2.Timeout(30, read=300),
        event_hooks=event_hooks,
    )
    async with (
        http,
        Client(
            streamable_http_client(console.url, http_client=http),
            mode=MODES[era],
            read_timeout_seconds=read_timeout,
            cache=None,
        ) as client,
    ):
        yield client
    await console.settled()


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def decision_of(result: Any) -> dict[str, Any]:
    return (result.meta or {}).get("opsconsole/decision", {})
