"""Upstream MCP servers: one long-lived connection per server and process, shared by every
session, opened with the console's own credentials (a client's token is never passed on), and
reconnected with backoff when it breaks.

Each upstream has a task of its own that enters and leaves the SDK's ``Client`` (its cancel
scopes must open and close in one task); calls from every session go through that one client
concurrently. Secrets are never written in the policy: ``${NAME}`` in a server's ``headers``
or ``env`` is read from the console's environment when it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError

from agents.policy.document import canonical_hash

logger = logging.getLogger("opsconsole.mcp")

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
CONNECT_WAIT_SECONDS = 10.0  # how long a call waits for a connection being opened
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class UpstreamUnavailable(Exception):
    """The upstream cannot be reached now (connecting, backing off, or broken mid-call)."""


def expand(value: str) -> str:
    """``${NAME}`` from the console's environment; a missing variable is an error, so an
    upstream is never called with an empty credential."""

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise UpstreamUnavailable(f"environment variable {name} is not set")
        return os.environ[name]

    return _VARIABLE.sub(variable, value)


class Upstream:
    """One upstream server: its connection task, its client, its tools as last listed."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config
        self.config_hash = canonical_hash(config)
        self.client: Client | None = None
        self.error = ""
        self.tools: list[types.Tool] = []
        self.tools_at = 0.0
        self.held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._closed = False
        self._list_lock = asyncio.Lock()

    @property
    def state(self) -> str:
        if self.client is not None:
            return "connected"
        return "down" if self.error else "connecting"

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"mcp-upstream-{self.name}"
            )

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _client(self) -> tuple[Client, httpx2.AsyncClient | None]:
        timeout = float(self.config.get("timeout_seconds", 30))
        if "url" in self.config:
            headers = {key: expand(value) for key, value in self.config["headers"].items()}
            http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(timeout, read=300))
            transport = streamable_http_client(expand(self.config["url"]), http_client=http)
            return Client(transport, read_timeout_seconds=timeout, cache=None), http
        command = [expand(part) for part in self.config["command"]]
        env = {key: expand(value) for key, value in self.config["env"].items()}
        parameters = StdioServerParameters(
            command=command[0], args=command[1:], env={**_base_env(), **env}
        )
        return Client(parameters, read_timeout_seconds=timeout, cache=None), None

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST_SECONDS
        while not self._closed:
            self._broken.clear()
            http: httpx2.AsyncClient | None = None
            try:
                client, http = self._client()
                async with client:
                    self.client, self.error = client, ""
                    self.tools_at = 0.0  # list again on a new connection
                    self._ready.set()
                    backoff = BACKOFF_FIRST_SECONDS
                    logger.info("MCP upstream %s connected", self.name)
                    await self._broken.wait()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - any failure is a reason to reconnect
                self.error = _describe(exc)
                logger.warning("MCP upstream %s: %s", self.name, self.error)
            finally:
                self.client = None
                self._ready.clear()
                if http is not None:
                    with contextlib.suppress(Exception):
                        await http.aclose()
            if self._closed:
                return
            self._ready.set()  # wake waiting calls: they fail fast with self.error
            await asyncio.sleep(backoff)
            self._ready.clear()
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    async def connected(self) -> Client:
        """The client, once connected; UpstreamUnavailable while it cannot be reached."""
        self.start()
        if self.client is None and not self.error:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), CONNECT_WAIT_SECONDS)
        if self.client is None:
            raise UpstreamUnavailable(self.error or "connecting")
        return self.client

    def broken(self, reason: str) -> None:
        """A call failed in a way that means the connection is gone: reconnect."""
        self.error = reason
        self._broken.set()

    async def list_tools(self) -> list[types.Tool]:
        """The upstream's tools, listed again once they are older than ``refresh_seconds``."""
        refresh = float(self.config.get("refresh_seconds", 60))
        async with self._list_lock:
            if self.tools_at and time.monotonic() - self.tools_at < refresh and self.client:
                return self.tools
            client = await self.connected()
            tools: list[types.Tool] = []
            cursor: str | None = None
            try:
                for _ in range(100):  # pages
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
            except MCPError as exc:
                raise UpstreamUnavailable(f"tools/list failed: {exc}") from exc
            except Exception as exc:
                self.broken(_describe(exc))
                raise UpstreamUnavailable(_describe(exc)) from exc
            self.tools, self.tools_at = tools, time.monotonic()
            return tools

    async def call_tool(
        self, tool: str, arguments: dict[str, Any], progress: ProgressFnT | None
    ) -> types.CallToolResult:
        client = await self.connected()
        try:
            return await client.call_tool(tool, arguments, progress_callback=progress)
        except MCPError as exc:
            # The upstream answered with a protocol error: the connection is fine.
            raise UpstreamUnavailable(f"{tool} failed upstream: {exc}") from exc
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            self.broken(_describe(exc))
            raise UpstreamUnavailable(_describe(exc)) from exc


class UpstreamPool:
    """The upstreams of one process, kept in step with the policy's ``mcp.servers``."""

    def __init__(self) -> None:
        self.upstreams: dict[str, Upstream] = {}
        self._synced: object = None

    def sync(self, servers: dict[str, dict[str, Any]]) -> None:
        """Open connections for new servers, reopen changed ones, close removed ones."""
        if servers is self._synced:  # the same policy document as last time: nothing changed
            return
        self._synced = servers
        for name in list(self.upstreams):
            upstream = self.upstreams[name]
            if name not in servers or upstream.config_hash != canonical_hash(servers[name]):
                del self.upstreams[name]
                asyncio.get_running_loop().create_task(upstream.close())
        for name, config in servers.items():
            if name not in self.upstreams:
                self.upstreams[name] = Upstream(name, config)
                self.upstreams[name].start()

    def get(self, name: str) -> Upstream | None:
        return self.upstreams.get(name)

    async def close(self) -> None:
        await asyncio.gather(*(u.close() for u in self.upstreams.values()))
        self.upstreams.clear()


def _base_env() -> dict[str, str]:
    """What a stdio upstream inherits of the console's environment: enough to start a program
    (PATH, HOME, locale), never the console's own secrets."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
    return {key: os.environ[key] for key in keep if key in os.environ}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
