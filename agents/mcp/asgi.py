"""The MCP endpoint as an ASGI application, mounted at ``/mcp`` beside Django
(``opsconsole/asgi.py``): agent-key authentication, then the SDK's Streamable HTTP transport,
which serves both protocol eras (the 2025-11-25 handshake and the stateless 2026-07-28).

The SDK's session manager needs a task group that outlives requests. It is started on the first
MCP request of the process (the console runs under uvicorn with ``--lifespan off``) and lives as
long as the process; upstream connections live in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from rest_framework.exceptions import AuthenticationFailed

from agents.gateway import core
from agents.mcp.server import (
    ANSWERED_SCOPE_KEY,
    GONE_SCOPE_KEY,
    RECORDING_SCOPE_KEY,
    VERIFY_SCOPE_KEY,
    Recording,
    build_server,
)
from opsconsole import keys
from opsconsole.authentication import authenticate_bearer, is_agent

logger = logging.getLogger("opsconsole.mcp")

MCP_PATH = "/mcp"

Scope = dict[str, Any]


def _security() -> TransportSecuritySettings:
    """Host and Origin checks against DNS rebinding: the console's own allowed hosts."""
    hosts = [h for h in settings.ALLOWED_HOSTS if h != "*"]
    if "*" in settings.ALLOWED_HOSTS:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    allowed_hosts = [*hosts, *(f"{h}:*" for h in hosts)]
    origins = [
        *settings.CSRF_TRUSTED_ORIGINS,
        *(f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")),
        *(f"{scheme}://{h}:*" for h in hosts for scheme in ("http", "https")),
    ]
    return TransportSecuritySettings(allowed_hosts=allowed_hosts, allowed_origins=origins)


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: Any = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _authenticate(header: str) -> Any:
    """The principal of an ``Authorization`` header, checked afresh on every request: on
    PostgreSQL an agent key in one statement on the gateway core's pool, else (a person's
    token, a key whose last use is due to be recorded, SQLite) through Django."""
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() == "bearer" and raw.startswith(core.AGENT_KEY_PREFIX) and not core.problems():
        with contextlib.suppress(Exception):  # the database: Django's path says what is wrong
            agent = await core.agent_for_key_async(keys.digest(raw))
            if agent is not None:
                return agent
    principal, _ = await sync_to_async(authenticate_bearer)(header)
    return principal


# --- a plain call answered with JSON -------------------------------------------------------------
#
# The SDK answers a request on an SSE stream unless the whole server is set to JSON answers, which
# would leave no way to send a held call's progress. An SSE answer costs: in the handshake era the
# transport's own task group, a priming event and a writer task; in the stateless era a task group
# with the handler and a disconnect watcher. Streamable HTTP lets the server pick per answer, so the
# console answers a ``tools/call`` that asked for no progress with JSON, in both eras (nothing else
# can be sent on that call: this server sends a call's notifications only to a progress token), and
# keeps SSE for the rest. The choice is this request's own (a context variable, read by the
# transport's ``is_json_response_enabled`` and the session manager's ``json_response``); sessions,
# their tasks and every other request keep the default. Such a call's handler is not cancelled by
# the SDK when the client goes away, so the console watches the connection itself (``GONE``).

_json_answer: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "opsconsole_mcp_json_answer", default=None
)
PEEK_MAX_BYTES = 64 * 1024  # a larger call is answered on SSE, its body streamed as it came


class _JsonAnswerForThisRequest:
    """``StreamableHTTPServerTransport.is_json_response_enabled`` (handshake era) and
    ``StreamableHTTPSessionManager.json_response`` (read for each stateless-era request): this
    request's choice when it made one, else the object's own setting."""

    def __get__(self, holder: Any, owner: Any = None) -> Any:
        if holder is None:
            return self
        chosen = _json_answer.get()
        return holder.__dict__.get("_json_default", False) if chosen is None else chosen

    def __set__(self, holder: Any, value: bool) -> None:
        holder.__dict__["_json_default"] = value


StreamableHTTPServerTransport.is_json_response_enabled = _JsonAnswerForThisRequest()  # type: ignore[assignment]
StreamableHTTPSessionManager.json_response = _JsonAnswerForThisRequest()  # type: ignore[assignment]


def _plain_call(body: bytes) -> bool:
    """A single ``tools/call`` request without a progress token."""
    try:
        message = json.loads(body)
    except ValueError:
        return False
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return False
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return not (isinstance(meta, dict) and meta.get("progressToken") is not None)


async def _peek(scope: Scope, receive: Any) -> tuple[Any, bool]:
    """(receive, plain): a small POST's body read ahead (and given to the SDK as it came) to tell
    whether it is a plain call."""
    length = dict(scope.get("headers", [])).get(b"content-length", b"")
    if scope.get("method") != "POST" or not length.isdigit() or int(length) > PEEK_MAX_BYTES:
        return receive, False
    chunks, pending = [], None
    while True:
        message = await receive()
        if message["type"] != "http.request":
            pending = message  # the client went away: the SDK hears it after the body
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    return core.replay(body, pending, receive), pending is None and _plain_call(body)


def _noting_disconnect(receive: Any, gone: asyncio.Event) -> Any:
    """``receive``, setting ``gone`` when it says the client went away."""

    async def noting() -> dict[str, Any]:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
        return message

    return noting


async def _watch_disconnect(receive: Any, gone: asyncio.Event) -> None:
    """Set ``gone`` when the client drops the connection (its body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def _answering(send: Any, answered: asyncio.Event) -> Any:
    """``send``, setting ``answered`` once the answer's last byte is handed to the server."""

    async def answering(message: dict[str, Any]) -> None:
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    return answering


def _handshake_era(scope: Scope) -> bool:
    header = MCP_PROTOCOL_VERSION_HEADER.lower().encode()
    version = dict(scope.get("headers", [])).get(header, b"").decode("latin-1")
    return version in HANDSHAKE_PROTOCOL_VERSIONS


# --- agents authenticated lately ----------------------------------------------------------------
#
# Every request is authenticated afresh, with one exception: a plain call of a key this process
# authenticated in the last RECENT_SECONDS goes on with that agent at once, and is verified by the
# gateway core's decision itself (its first statement reads the key and the agent: a revoked key or
# a disabled agent is never decided there). A call the core does not decide is authenticated in
# full before anything else happens to it (``server.call_tool`` through ``VERIFY_SCOPE_KEY``), and
# a key that fails then is answered 401, as on any other request (``_refusable``).

RECENT_SECONDS = 60.0
REFUSED_SCOPE_KEY = "opsconsole.refused"  # (status, body) to answer instead of the SDK's answer
_recent: dict[str, tuple[Any, float]] = {}


def _remember(key_hash: str, agent: Any) -> None:
    if len(_recent) > 10_000:
        _recent.clear()
    _recent[key_hash] = (agent, time.monotonic())


def _recent_agent(key_hash: str) -> Any:
    seen = _recent.get(key_hash)
    if seen is None or time.monotonic() - seen[1] > RECENT_SECONDS:
        return None
    return seen[0]


def _refusable(scope: Scope, send: Any) -> Any:
    """``send``, unless the request's key failed its authentication in the handler: then a 401
    (or a 503) in place of the SDK's answer, whose start comes only once the handler is done."""
    refused = False

    async def wrapped(message: dict[str, Any]) -> None:
        nonlocal refused
        if message["type"] == "http.response.start" and REFUSED_SCOPE_KEY in scope:
            refused = True
            status, body, headers = scope[REFUSED_SCOPE_KEY]
            await _send_json(send, status, body, headers)
        if not refused:
            await send(message)

    return wrapped


class McpApp:
    """``/mcp``: authenticate the agent key, then hand the request to the SDK."""

    def __init__(self) -> None:
        self.server = build_server()
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            security_settings=_security(),
            max_request_body_size=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
        )
        self._started: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def _run_manager(self, started: asyncio.Future[None]) -> None:
        try:
            async with self.manager.run():
                started.set_result(None)
                await asyncio.Event().wait()  # as long as the process
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    async def _ensure_started(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            self._task = asyncio.get_running_loop().create_task(
                self._run_manager(self._started), name="mcp-session-manager"
            )
        await asyncio.shield(self._started)

    async def close(self) -> None:
        await Recording.settled()  # results answered but not yet written
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):  # cancelled, as asked
                await self._task

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
        key_hash = keys.digest(header.partition(" ")[2].strip())
        original = receive
        receive, plain = await _peek(scope, receive)
        scope = dict(scope)
        agent = _recent_agent(key_hash) if plain else None
        if agent is None:
            refusal = await self._authenticate(scope, header, key_hash)
            if refusal is not None:
                await _send_json(send, *refusal)
                return
            agent = scope["opsconsole.agent"]
        else:
            scope["opsconsole.agent"] = agent

            async def verify() -> Any:
                refusal = await self._authenticate(scope, header, key_hash)
                if refusal is not None:
                    scope[REFUSED_SCOPE_KEY] = refusal
                    return None
                return (
                    scope["opsconsole.agent"] if scope["opsconsole.agent"].pk == agent.pk else None
                )

            scope[VERIFY_SCOPE_KEY] = verify
            send = _refusable(scope, send)
        await self._ensure_started()
        scope["opsconsole.key_hash"] = key_hash
        # Sessions belong to the agent that opened them (the SDK compares this principal).
        scope["user"] = AuthenticatedUser(
            AccessToken(token="", client_id=f"agent:{agent.pk}", scopes=[])
        )
        watcher = None
        handshake = scope.get("method") == "POST" and _handshake_era(scope)
        if handshake or plain:
            # The handler of a handshake-era call runs in the session's task, and that of a call
            # answered with JSON in the request's own: a dropped connection ends neither. It is
            # told instead (a held call then never runs), as the SDK cancels the handler of a
            # stateless-era call answered on SSE. A handshake-era SSE answer listens for the
            # disconnect itself (through ``receive``); nothing does for a JSON answer, so a
            # watcher does.
            gone = scope[GONE_SCOPE_KEY] = asyncio.Event()
            if handshake:
                receive = _noting_disconnect(receive, gone)
            if plain:
                _json_answer.set(True)
                watcher = asyncio.get_running_loop().create_task(_watch_disconnect(original, gone))
        # A result is recorded once its answer is out (``Recording``).
        answered = scope[ANSWERED_SCOPE_KEY] = asyncio.Event()
        send = _answering(send, answered)
        try:
            await self.manager.handle_request(scope, receive, send)
            answered.set()
            # The answer is out; the request ends once its results are written (Recording).
            await Recording.wait(scope.get(RECORDING_SCOPE_KEY, []))
        finally:
            answered.set()
            if watcher is not None:
                watcher.cancel()

    @staticmethod
    async def _authenticate(
        scope: Scope, header: str, key_hash: str
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]] | None:
        """Authenticate afresh: the agent in ``scope``, or the refusal to answer."""
        try:
            agent = await _authenticate(header)
        except AuthenticationFailed as exc:
            _recent.pop(key_hash, None)
            return (
                401,
                {"error": "unauthenticated", "detail": str(exc.detail)},
                [(b"www-authenticate", b'Bearer realm="mcp"')],
            )
        except DatabaseError as exc:
            logger.warning("control plane unavailable: %s", exc)
            return 503, {"error": "unavailable", "detail": "try again"}, []
        if not is_agent(agent):
            _recent.pop(key_hash, None)
            return 403, {"error": "forbidden", "detail": "The MCP endpoint is for agent keys."}, []
        scope["opsconsole.agent"] = agent
        _remember(key_hash, agent)
        return None


class WithMcp:
    """Serve ``/mcp`` with the MCP endpoint and everything else with ``app`` (Django)."""

    def __init__(self, app: Any, mcp: McpApp | None = None) -> None:
        self.app = app
        self.mcp = mcp or McpApp()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == MCP_PATH or path == MCP_PATH + "/"):
            await self.mcp(scope, receive, send)
            return
        await self.app(scope, receive, send)
