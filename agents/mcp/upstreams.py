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
import itertools
import json
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from pydantic import ValidationError

from agents.policy.document import canonical_hash

logger = logging.getLogger("opsconsole.mcp")

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
CONNECT_WAIT_SECONDS = 10.0  # how long a call waits for a connection being opened
MCP_SESSION_ID_HEADER = "mcp-session-id"
MAX_SSE_EVENT_BYTES = 1024 * 1024  # as the SDK's client
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
        self._http: aiohttp.ClientSession | None = None  # plain calls' (HTTP, connected)
        self._url = ""
        self._proxy: str | None = None
        self._session_id = ""  # a handshake-era upstream's Mcp-Session-Id
        self._call_ids = itertools.count(1)

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

    def _server_headers(self) -> dict[str, str]:
        return {key: expand(value) for key, value in self.config["headers"].items()}

    def _client(self) -> tuple[Client, httpx2.AsyncClient | None]:
        timeout = float(self.config.get("timeout_seconds", 30))
        if "url" in self.config:
            http = httpx2.AsyncClient(
                headers=self._server_headers(),
                timeout=httpx2.Timeout(timeout, read=300),
                event_hooks={"response": [self._note_session]},
            )
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
            calls: aiohttp.ClientSession | None = None
            try:
                client, http = self._client()
                self._session_id = ""
                if http is not None:
                    self._url = expand(self.config["url"])
                    self._proxy = _env_proxy(self._url)
                    calls = aiohttp.ClientSession(
                        headers=self._server_headers(),
                        # the trust store of the SDK's own HTTP client, so both reach the same
                        # servers
                        connector=aiohttp.TCPConnector(
                            ssl=httpx2.create_ssl_context()
                            if self._url.startswith("https:")
                            else True
                        ),
                    )
                async with client:
                    self.client, self.error, self._http = client, "", calls
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
                self.client, self._http = None, None
                self._ready.clear()
                if http is not None:
                    with contextlib.suppress(Exception):
                        await http.aclose()
                if calls is not None:
                    with contextlib.suppress(Exception):
                        await calls.close()
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
        """Run one call upstream. A call with no progress to relay, to a server over HTTP, is
        sent as one POST on the connection's own HTTP client (``_post_call``); any other through
        the SDK's client."""
        client = await self.connected()
        stamp = getattr(client.session, "_stamp", None)
        if progress is None and self._http is not None and stamp is not None:
            return await self._post_call(self._http, stamp, tool, arguments)
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

    # --- a plain call as one POST ---------------------------------------------------------------
    #
    # The SDK's client sends a request through its session, dispatcher and transport tasks and
    # its HTTP client, which together cost a plain call about as much CPU as the console's whole
    # decision. A call that relays no progress needs none of that: the console POSTs the JSON-RPC
    # request itself on a lean HTTP client of the connection (aiohttp, with the server's own
    # headers), stamped by the connection's session exactly as the SDK stamps a request (protocol
    # version, and in the 2026-07-28 era the ``_meta`` envelope and the ``Mcp-Method`` /
    # ``Mcp-Name`` / ``Mcp-Param-*`` headers), with the handshake-era session's id, and reads the
    # answer as JSON or SSE. A request the upstream sends back on that stream is answered: a ping
    # with an empty result, anything else (sampling, elicitation, roots: the console offers none)
    # with a JSON-RPC error, as the SDK's client declines them.

    async def _note_session(self, response: httpx2.Response) -> None:
        """The handshake-era session id the upstream gave at ``initialize`` (a response hook)."""
        session_id = response.headers.get(MCP_SESSION_ID_HEADER)
        if session_id:
            self._session_id = session_id

    def _headers(self, stamped: dict[str, str]) -> dict[str, str]:
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            **stamped,
        }
        if self._session_id:
            headers[MCP_SESSION_ID_HEADER] = self._session_id
        return headers

    async def _post_call(
        self, http: aiohttp.ClientSession, stamp: Any, tool: str, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        request_id = f"opsconsole-{next(self._call_ids)}"
        data: dict[str, Any] = {
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        options: dict[str, Any] = {}
        stamp(data, options)
        headers = self._headers(options.get("headers", {}))
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, **data})
        timeout = float(self.config.get("timeout_seconds", 30))
        try:
            async with (
                asyncio.timeout(timeout),
                http.post(
                    self._url,
                    data=body,
                    headers=headers,
                    proxy=self._proxy,
                ) as response,
            ):
                answer = await self._answer(http, response, request_id, headers)
        except TimeoutError:
            raise UpstreamUnavailable(
                f"{tool} failed upstream: no answer in {timeout:g} s"
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:  # the connection, or a garbled answer
            self.broken(_describe(exc))
            raise UpstreamUnavailable(_describe(exc)) from exc
        error = answer.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamUnavailable(f"{tool} failed upstream: {message}")
        result = answer.get("result")
        if not isinstance(result, dict) or result.get("resultType", "complete") != "complete":
            raise UpstreamUnavailable(
                f"{tool} failed upstream: it answered with something other than a tool result"
            )
        try:
            return types.CallToolResult.model_validate(result, by_name=False)
        except ValidationError as exc:
            raise UpstreamUnavailable(
                f"{tool} failed upstream: its answer is not a tool result "
                f"({exc.error_count()} errors)"
            ) from None

    async def _answer(
        self,
        http: aiohttp.ClientSession,
        response: aiohttp.ClientResponse,
        request_id: str,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        """The JSON-RPC answer to ``request_id`` in ``response``."""
        if response.status == 404 and self._session_id:
            self.broken("the upstream ended the session")
            raise UpstreamUnavailable("the upstream ended the session; reconnecting")
        if response.content_type == "text/event-stream" and response.status < 300:
            async for message in _sse_messages(response):
                if message.get("id") == request_id and "method" not in message:
                    return message
                if "method" in message and "id" in message:
                    await self._decline(http, message, headers)
            raise UpstreamUnavailable("the upstream's stream ended without an answer to the call")
        content = await response.read()
        if response.content_type == "application/json":
            with contextlib.suppress(ValueError):
                message = json.loads(content)
                if isinstance(message, dict) and ("result" in message or "error" in message):
                    return message  # a JSON-RPC error comes with a 4xx as well
        raise UpstreamUnavailable(f"HTTP {response.status} from the upstream")

    async def _decline(
        self, http: aiohttp.ClientSession, request: dict[str, Any], headers: dict[str, str]
    ) -> None:
        """Answer a request the upstream sent during a call: a ping, else "not supported"."""
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
        if request["method"] == "ping":
            reply["result"] = {}
        else:
            reply["error"] = {
                "code": types.METHOD_NOT_FOUND,
                "message": f"{request['method']} is not supported by the agent ops console",
            }
        kept = {"accept", "content-type", MCP_PROTOCOL_VERSION_HEADER, MCP_SESSION_ID_HEADER}
        with contextlib.suppress(aiohttp.ClientError):
            async with http.post(
                self._url,
                data=json.dumps(reply),
                headers={k: v for k, v in headers.items() if k.lower() in kept},
                proxy=self._proxy,
            ) as response:
                await response.read()


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP(S)_PROXY``, ``NO_PROXY``), looked up
    once per connection (aiohttp's ``trust_env`` would look it up, in a thread, per request)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


async def _sse_messages(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of an SSE answer: each ``message`` event's data, parsed (the HTML
    standard's event stream format: lines end in LF or CRLF, ``data`` lines join with LF, an
    empty line ends an event; comments, ``id`` and ``retry`` are of no use to one call)."""
    buffer, event, size = b"", "message", 0
    data: list[str] = []
    async for chunk in response.content.iter_any():
        *lines, buffer = (buffer + chunk).split(b"\n")
        for raw in lines:
            line = raw.removesuffix(b"\r").decode()
            if not line:
                if event == "message" and data:
                    message = json.loads("\n".join(data))
                    if isinstance(message, dict):
                        yield message
                event, data, size = "message", [], 0
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
                size += len(value)
        if size + len(buffer) > MAX_SSE_EVENT_BYTES:
            raise ValueError(
                f"an event of the upstream's stream is over {MAX_SSE_EVENT_BYTES} bytes"
            )


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
