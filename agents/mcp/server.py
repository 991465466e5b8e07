"""The MCP server the console serves at ``/mcp`` (the SDK's low-level ``Server``): ``tools/list``
filtered for the calling agent, ``tools/call`` decided by the gateway, held for approval, then
forwarded to the upstream that owns the tool.

What the model sees is always a tool result: an allowed call's upstream result as it came (once
its output passed the policy's validation), else an ``isError`` result whose text says what
happened and what to do, with the decision in ``_meta["opsconsole/decision"]``. Only a tool no
upstream serves is a protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import mcp_types as types
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from agents import stop_reasons
from agents.gateway import core
from agents.gateway.decisions import output_errors
from agents.mcp import services
from agents.mcp.upstreams import Upstream, UpstreamPool, UpstreamUnavailable
from agents.models import Agent, Decision, McpToolSeen, ToolCall
from agents.policy.document import (
    MAX_TOOL_NAME,
    TOOL_NAME_PATTERN,
    Policy,
    kill_switch_turns_off,
)
from agents.policy.selectors import kill_switch_current, policy_current
from approvals.waits import approval_wait
from opsconsole.errors import ServiceError
from opsconsole.limits import ToolCallRateThrottle, check_args_size

logger = logging.getLogger("opsconsole.mcp")

RUN_HEADER = "opsconsole-run"  # names the run a call belongs to (both eras)
HOLD_HEADER = "opsconsole-hold-seconds"  # a client may shorten its hold, never lengthen it
META_RUN = "opsconsole/run"
META_HOLD = "opsconsole/hold_seconds"
META_DECISION = "opsconsole/decision"
PROGRESS_EVERY_SECONDS = 5.0
CONTAINMENT_EVERY_SECONDS = 1.0  # a held call re-reads the kill switch, pause and degrade
SESSION_HEADER = "mcp-session-id"
RECORDING_SCOPE_KEY = "opsconsole.recording"  # the request's results still being recorded
VERIFY_SCOPE_KEY = "opsconsole.verify"  # set by agents.mcp.asgi for a key taken on trust
ANSWERED_SCOPE_KEY = "opsconsole.answered"  # set (by agents.mcp.asgi) once the answer is out
GONE_SCOPE_KEY = "opsconsole.gone"  # set (by agents.mcp.asgi) once the client dropped the request

_tool_name = __import__("re").compile(TOOL_NAME_PATTERN)


def _agent(ctx: ServerRequestContext[Any, Any]) -> Agent:
    """The agent the ASGI layer authenticated (agents.mcp.asgi); no request gets here without."""
    assert ctx.request is not None
    return ctx.request.scope["opsconsole.agent"]


def _pool(ctx: ServerRequestContext[Any, Any]) -> UpstreamPool:
    return ctx.lifespan_context["pool"]


def _client_name(ctx: ServerRequestContext[Any, Any]) -> str:
    params = ctx.session.client_params
    if params is not None and params.client_info is not None:
        return params.client_info.name[:100]
    return "client"


def _meta(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    return dict(ctx.meta or {})


def _header(ctx: ServerRequestContext[Any, Any], name: str) -> str:
    if ctx.request is None:
        return ""
    return ctx.request.headers.get(name, "")


def run_key(ctx: ServerRequestContext[Any, Any]) -> tuple[str, str]:
    """(key, label) of the run a call belongs to.

    A name the client gives (the ``Opsconsole-Run`` header, or ``_meta["opsconsole/run"]``),
    else the MCP session (2025-11-25 era: one run per session), else (the stateless 2026-07-28
    era, no name) one run per agent, client and UTC day.
    """
    named = str(_meta(ctx).get(META_RUN) or _header(ctx, RUN_HEADER)).strip()[:150]
    if named:
        return f"name:{named}", named
    client = _client_name(ctx)
    session = _header(ctx, SESSION_HEADER)
    if session and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return f"session:{session}", f"{client} session {session[:8]}"
    day = datetime.now(UTC).date().isoformat()
    return f"day:{client}:{day}", f"{client} on {day}"


# --- tools/list -----------------------------------------------------------------------------


def _listed(policy: Policy, agent: Agent, kill_mode: str, upstream: Upstream) -> list[types.Tool]:
    """The upstream's tools this agent may call now, under their policy names, with the
    console's own classification re-emitted (annotations from upstream are only hints)."""
    tools = []
    for tool in upstream.tools:
        name = f"{upstream.name}.{tool.name}"
        if len(name) > MAX_TOOL_NAME or not _tool_name.match(name) or name in upstream.held:
            continue
        if not policy.is_allowed(name, agent.name):
            continue
        rule = policy.tool_rule_for(name, agent.name)
        if kill_switch_turns_off(kill_mode, rule):
            continue
        hints = tool.annotations or types.ToolAnnotations()
        read = rule.effect == "read"
        tools.append(
            tool.model_copy(
                update={
                    "name": name,
                    "annotations": hints.model_copy(
                        update={
                            "read_only_hint": read,
                            "destructive_hint": False if read else hints.destructive_hint,
                        }
                    ),
                    "meta": {
                        **(tool.meta or {}),
                        "opsconsole/effect": rule.effect,
                        "opsconsole/approval": rule.approval_required,
                    },
                }
            )
        )
    return tools


async def _refresh(upstream: Upstream) -> None:
    """List an upstream's tools (when due) and pin what it lists."""
    before = upstream.tools_at
    tools = await upstream.list_tools()
    if upstream.tools_at != before:
        wire = [
            {**tool.model_dump(by_alias=True, mode="json"), "name": f"{upstream.name}.{tool.name}"}
            for tool in tools
        ]
        upstream.held = await sync_to_async(services.mcp_tools_seen_record)(
            server=upstream.name, tools=wire
        )


async def list_tools(
    ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    agent = _agent(ctx)
    policy, kill_mode = await sync_to_async(_policy_and_switch)()
    pool = _pool(ctx)
    pool.sync(policy.mcp_servers)
    upstreams = list(pool.upstreams.values())
    outcomes = await asyncio.gather(*(_refresh(u) for u in upstreams), return_exceptions=True)
    tools: list[types.Tool] = []
    for upstream, outcome in zip(upstreams, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            logger.warning("MCP upstream %s not listed: %s", upstream.name, outcome)
            continue
        tools.extend(_listed(policy, agent, kill_mode, upstream))
    return types.ListToolsResult(tools=tools)


def _policy_and_switch() -> tuple[Policy, str]:
    return policy_current(), kill_switch_current().mode


# --- tools/call -----------------------------------------------------------------------------


def _answer(text: str, decision: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        _meta={META_DECISION: decision},
    )


def _decision(tool_call: ToolCall, **extra: Any) -> dict[str, Any]:
    return {
        "decision": tool_call.decision,
        "stop_reason": tool_call.stop_reason or None,
        "detail": tool_call.detail,
        "tool_call_id": tool_call.pk,
        "run_id": tool_call.run_id,
        **extra,
    }


def stopped(tool: str, reason: str, detail: str, decision: dict[str, Any]) -> types.CallToolResult:
    what, _ = stop_reasons.explain(reason)
    return _answer(
        f"STOPPED by the agent ops console: {reason}. {what} ({detail or 'no detail'}). "
        f"Nothing was executed. The run has ended: do not call {tool} or any other tool "
        "again; tell the user the task was stopped and why.",
        {**decision, "decision": Decision.STOP, "stop_reason": reason, "detail": detail},
    )


def refused(tool_call: ToolCall, refusals: int, limit: int) -> types.CallToolResult:
    reason = tool_call.stop_reason
    kind = stop_reasons.kind_of(reason)
    fix = (
        "fix the arguments to match the tool's input schema and call it again"
        if kind == stop_reasons.INVALID_TOOL_ARGS
        else "use another tool; this one is not allowed for you"
    )
    return _answer(
        f"REFUSED by the agent ops console: {reason} ({tool_call.detail}). Nothing was executed. "
        f"The run goes on: {fix}. Refusal {refusals} of at most {limit} in this run; the next "
        "one past that ends the run.",
        _decision(tool_call, refusals=refusals, max_refusals=limit),
    )


def pending(tool_call: ToolCall) -> types.CallToolResult:
    request = tool_call.approval
    expires = request.expires_at.isoformat()
    return _answer(
        f"APPROVAL_PENDING: a human must approve {tool_call.tool} (approval {request.pk}, expires "
        f"{expires}). Nothing was executed. Tell the user it waits for approval {request.pk}; "
        f"once it is approved, call {tool_call.tool} again with identical arguments (it then "
        "runs once). Do not change the arguments: that asks for a new approval.",
        _decision(
            tool_call,
            approval_id=request.pk,
            expires_at=expires,
            poll_after_ms=int(CONTAINMENT_EVERY_SECONDS * 5000),
        ),
    )


def _client_gone(ctx: ServerRequestContext[Any, Any]) -> bool:
    """The client dropped this request's connection (set for a handshake-era call and for a call
    answered with JSON; the SDK cancels the handler of any other)."""
    gone = ctx.request.scope.get(GONE_SCOPE_KEY) if ctx.request is not None else None
    return gone is not None and gone.is_set()


def gave_up(tool_call: ToolCall) -> types.CallToolResult:
    """What a held call answers once its client went away (nobody reads it; the log does)."""
    logger.info(
        "MCP client dropped tool call %s (%s) while it waited for approval: not executed",
        tool_call.pk,
        tool_call.tool,
    )
    return _answer(
        f"CLIENT_GONE: the connection of this call closed while it waited for approval; nothing "
        f"was executed. Once approval {tool_call.approval.pk} is given, call {tool_call.tool} "
        "again with identical arguments.",
        _decision(tool_call, approval_id=tool_call.approval.pk),
    )


def _hold_seconds(ctx: ServerRequestContext[Any, Any], policy: Policy) -> float:
    """The policy's hold for this client, shortened if the client asks (header or _meta)."""
    hold = policy.mcp_hold_seconds(_client_name(ctx))
    asked = _meta(ctx).get(META_HOLD) or _header(ctx, HOLD_HEADER)
    with contextlib.suppress(TypeError, ValueError):
        if asked not in ("", None):
            hold = min(hold, max(0.0, float(asked)))
    return hold


async def _hold(
    ctx: ServerRequestContext[Any, Any], agent: Agent, tool_call: ToolCall, hold: float
) -> ToolCall | types.CallToolResult:
    """Hold a call waiting for approval open: until it is decided (the call as it is then), the
    kill switch, a pause or a degrade releases it (a stop), or the hold ends (pending)."""
    deadline = time.monotonic() + hold
    progress_at = 0.0
    started = time.monotonic()
    while True:
        tool_call = await sync_to_async(services.mcp_call_state)(
            agent=agent, tool_call_id=tool_call.pk
        )
        if _client_gone(ctx):
            return gave_up(tool_call)
        if tool_call.decision != Decision.PENDING_APPROVAL:
            return tool_call
        contained = await sync_to_async(services.mcp_containment)(agent=agent, tool=tool_call.tool)
        if contained is not None:
            await sync_to_async(services.mcp_run_stop)(
                run_id=tool_call.run_id, reason=contained[0], detail=contained[1]
            )
            return stopped(tool_call.tool, contained[0], contained[1], _decision(tool_call))
        now = time.monotonic()
        if now >= deadline:
            return pending(tool_call)
        if now - progress_at >= PROGRESS_EVERY_SECONDS:
            progress_at = now
            await ctx.session.report_progress(
                now - started,
                None,
                f"Waiting for human approval {tool_call.approval.pk} of {tool_call.tool}",
            )
        await approval_wait(tool_call.pk, min(deadline - now, CONTAINMENT_EVERY_SECONDS))


def _output(result: types.CallToolResult) -> Any:
    """What the policy validates: the structured result when there is one, else the content."""
    if result.structured_content is not None:
        return result.structured_content
    return [block.model_dump(by_alias=True, mode="json") for block in result.content]


def _error_text(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))[
        :4000
    ]


async def _report(
    agent: Agent,
    tool_call: ToolCall,
    result: types.CallToolResult,
    latency_ms: int,
    decided: core.Outcome | None,
    scope: dict[str, Any],
) -> services.ResultOutcome:
    """The upstream's answer validated and recorded. A plain success of a call the fast path
    decided is validated here, against the policy of its decision, and recorded right after the
    answer (``Recording``); anything else is recorded by the gateway's ``tool_call_report``
    before the model sees it (an invalid output stops the run there)."""
    output = _output(result)
    if decided is not None and decided.policy is not None and not result.is_error:
        rule = decided.policy.tool_rule(tool_call.tool)
        if not output_errors(rule, output):
            report = core.ReportRequest(
                tool_call_id=tool_call.pk,
                run_id=tool_call.run_id,
                agent_id=agent.pk,
                agent_name=agent.name,
                tool=tool_call.tool,
                output=output,
                latency_ms=latency_ms,
                policy=decided.policy,
                policy_key=decided.policy_key,  # type: ignore[arg-type]
                validated=True,
            )
            Recording.start(agent, report, timezone.now(), scope)
            return services.ResultOutcome(True, None, [], None)
    return await sync_to_async(services.mcp_result_report)(
        agent=agent,
        tool_call_id=tool_call.pk,
        ok=not result.is_error,
        output=output,
        error=_error_text(result) if result.is_error else "",
        latency_ms=latency_ms,
    )


class Recording:
    """Valid results of fast-path calls, recorded just after the model got them.

    The call's decision was committed before it ran upstream, and its output was validated
    before the answer: what is left (the result row, its trace event, the breaker's rate, the run's
    activity) is written once the answer is out, instead of before it. The request that carried
    the call ends once it is written (so a graceful shutdown waits for it: ``agents.mcp.asgi``),
    and so does a handshake session. A database failure is retried through the gateway's services;
    a result that still cannot be written is logged with its call.

    The run's next call in this process waits until the record is *ordered* before it (so it sees
    the run as the slow path would have left it): once the record's transaction holds the run's
    row and its checks passed, only its writes and COMMIT are left, and any decision of the run
    locks that row after it. A record that hands over to the gateway's services is waited for to
    its end. Only a database failure between the two (the record then retried, the next call
    decided meanwhile) can put a result after the run's next call."""

    # run id -> (its latest result being recorded, set once that record is ordered or done)
    pending: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
    RETRY_SECONDS = (0.5, 2.0, 5.0)

    @classmethod
    def start(
        cls, agent: Agent, report: core.ReportRequest, now: datetime, scope: dict[str, Any]
    ) -> None:
        earlier = cls.pending.get(report.run_id)
        ordered = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            cls._record(
                agent,
                report,
                now,
                earlier[0] if earlier else None,
                ordered,
                scope.get(ANSWERED_SCOPE_KEY),
            )
        )
        cls.pending[report.run_id] = (task, ordered)
        scope.setdefault(RECORDING_SCOPE_KEY, []).append(task)

        def done(finished: asyncio.Task[None]) -> None:
            ordered.set()
            entry = cls.pending.get(report.run_id)
            if entry is not None and entry[0] is finished:
                del cls.pending[report.run_id]

        task.add_done_callback(done)

    @classmethod
    async def settled(cls, run_id: int | None = None) -> None:
        """Wait for the results being recorded: of one run, or (None) of every run."""
        if run_id is None:
            await cls.wait([task for task, _ in cls.pending.values()])
        elif (entry := cls.pending.get(run_id)) is not None:
            await cls.wait([entry[0]])

    @classmethod
    async def ordered(cls, run_id: int) -> None:
        """Wait until the run's latest result is written, or its record holds the run's row and
        will write it: whatever the run does next is ordered after that result."""
        entry = cls.pending.get(run_id)
        if entry is not None:
            await entry[1].wait()

    @staticmethod
    async def wait(tasks: list[asyncio.Task[None] | None]) -> None:
        for task in tasks:
            if task is not None:
                with contextlib.suppress(BaseException):  # _record logs its own failures
                    await asyncio.shield(task)

    @classmethod
    async def _record(
        cls,
        agent: Agent,
        report: core.ReportRequest,
        now: datetime,
        earlier: asyncio.Task[None] | None,
        ordered: asyncio.Event,
        answered: asyncio.Event | None,
    ) -> None:
        if answered is not None:  # the answer goes out first: the model waits for it
            await answered.wait()
        if earlier is not None:  # results of one run are written in their order
            with contextlib.suppress(BaseException):
                await earlier
        try:
            recorded = await core.report_async(report, now, committing=ordered.set)
        except core.Fallback as fallback:
            core.FAST_PATH.labels(f"mcp_report_{fallback.reason}").inc()
        else:
            core.spawn(core.broadcast_run(recorded))
            return
        for attempt, pause in enumerate((0.0, *cls.RETRY_SECONDS)):
            await asyncio.sleep(pause)
            try:
                await sync_to_async(services.mcp_result_report)(
                    agent=agent,
                    tool_call_id=report.tool_call_id,
                    ok=True,
                    output=report.output,
                    error="",
                    latency_ms=report.latency_ms or 0,
                )
                return
            except DatabaseError as exc:
                logger.warning(
                    "MCP result of tool call %s not recorded yet (attempt %s): %s",
                    report.tool_call_id,
                    attempt + 1,
                    exc,
                )
            except ServiceError as exc:  # the call was reported meanwhile, or its run is gone
                logger.warning(
                    "MCP result of tool call %s not recorded: %s", report.tool_call_id, exc
                )
                return
            except Exception:
                logger.exception("MCP result of tool call %s not recorded", report.tool_call_id)
                return
        logger.error(
            "MCP result of tool call %s of run %s was answered but could not be recorded",
            report.tool_call_id,
            report.run_id,
        )


async def _execute(
    ctx: ServerRequestContext[Any, Any],
    agent: Agent,
    upstream: Upstream,
    tool: str,
    args: dict[str, Any],
    tool_call: ToolCall,
    decided: core.Outcome | None = None,
) -> types.CallToolResult:
    """Run an allowed call upstream, inside this live request, and have its result validated."""

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    relay = progress if _meta(ctx).get("progressToken") is not None else None
    started = time.monotonic()
    try:
        result = await upstream.call_tool(tool, args, relay)
    except UpstreamUnavailable as exc:
        outcome = await sync_to_async(services.mcp_result_report)(
            agent=agent,
            tool_call_id=tool_call.pk,
            ok=False,
            output=None,
            error=str(exc),
            latency_ms=int((time.monotonic() - started) * 1000),
        )
        return _answer(
            f"UPSTREAM_FAILED: the MCP server {upstream.name} could not run {tool_call.tool}: "
            f"{exc}. It may or may not have happened; the console counts the failure against "
            "the tool's circuit breaker. Try again later or use another tool.",
            _decision(tool_call, upstream_error=str(exc), stop_reason=outcome.stop_reason),
        )
    latency_ms = int((time.monotonic() - started) * 1000)
    assert ctx.request is not None
    outcome = await _report(agent, tool_call, result, latency_ms, decided, ctx.request.scope)
    if not outcome.valid:
        reason = outcome.stop_reason or stop_reasons.for_tool(
            stop_reasons.INVALID_TOOL_OUTPUT, tool_call.tool
        )
        return stopped(
            tool_call.tool,
            reason,
            "the tool's output failed the console's validation: " + "; ".join(outcome.errors),
            _decision(tool_call),
        )
    meta = dict(result.meta or {})
    meta[META_DECISION] = _decision(tool_call, stop_reason=outcome.stop_reason)
    return result.model_copy(update={"meta": meta})


async def call_tool(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    agent = _agent(ctx)
    name = params.name
    args = params.arguments or {}
    server, _, tool = name.partition(".")
    pool = _pool(ctx)
    upstream = pool.get(server)
    if upstream is None:  # the first call of the process, or a server just registered
        pool.sync((await sync_to_async(policy_current)()).mcp_servers)
        upstream = pool.get(server)
    if upstream is None or not tool:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")
    try:
        check_args_size(args)  # the HTTP gateway's cap (OPSCONSOLE_MAX_ARGS_BYTES)
    except ServiceError as exc:
        raise MCPError(types.INVALID_PARAMS, str(exc.detail)) from None
    limited = await _rate_limited(agent, name)
    if limited is not None:
        return limited
    key, label = run_key(ctx)
    known = services.mcp_run_known(agent=agent, key=key)
    if known is not None:
        await Recording.ordered(known)  # the run's previous result: decided after it
    fast = await _fast_decision(ctx, agent, name, args, upstream, known)
    assert ctx.request is not None
    if fast is None and VERIFY_SCOPE_KEY in ctx.request.scope:
        # The key was taken on trust for the core, which checks it in its decision; anything
        # else is authenticated first (the ASGI layer answers 401 if that fails).
        agent = await ctx.request.scope.pop(VERIFY_SCOPE_KEY)()
        if agent is None:
            return _answer(
                "UNAUTHENTICATED: the agent ops console refused this agent key. Nothing was "
                "executed.",
                {"error": "unauthenticated", "run_id": None, "tool_call_id": None},
            )
    if fast is not None:
        tool_call, decided = fast
        if key.startswith("session:"):
            _finish_with_session(ctx, agent, tool_call.run_id)
        pool.sync(decided.policy.mcp_servers)  # type: ignore[union-attr]
        upstream = pool.get(server) or upstream
        return await _execute(ctx, agent, upstream, tool, args, tool_call, decided)
    start = await sync_to_async(services.mcp_call_start)(
        agent=agent, key=key, label=label, tool=name, args=args
    )
    policy = start.policy
    pool.sync(policy.mcp_servers)
    if start.refused_run is not None or start.tool_call is None:
        refused_run = start.refused_run or services.RunRefused(stop_reasons.KILL_SWITCH, "")
        return stopped(
            name,
            refused_run.stop_reason,
            refused_run.detail,
            {"run_id": None, "tool_call_id": None},
        )
    tool_call = start.tool_call
    if key.startswith("session:"):
        _finish_with_session(ctx, agent, tool_call.run_id)
    if pool.get(server) is not upstream:  # the policy changed the server under this call
        upstream = pool.get(server) or upstream
    if tool_call.decision == Decision.PENDING_APPROVAL:
        held = await _hold(ctx, agent, tool_call, _hold_seconds(ctx, policy))
        if isinstance(held, types.CallToolResult):
            return held
        tool_call = held
    if tool_call.decision == Decision.REFUSED:
        return refused(tool_call, start.refusals, policy.refusal_rule(agent.name)[1])
    if tool_call.decision != Decision.ALLOW:
        return stopped(name, tool_call.stop_reason, tool_call.detail, _decision(tool_call))
    if getattr(tool_call, "approval", None) is not None:
        # Approved: the kill switch, a pause or a degrade since then still stop it, and an
        # approval runs one call only.
        contained = await sync_to_async(services.mcp_containment)(agent=agent, tool=name)
        if contained is not None:
            await sync_to_async(services.mcp_run_stop)(
                run_id=tool_call.run_id, reason=contained[0], detail=contained[1]
            )
            return stopped(name, contained[0], contained[1], _decision(tool_call))
        if not await sync_to_async(services.mcp_approval_claim)(tool_call=tool_call):
            return _answer(
                f"ALREADY_USED: approval {tool_call.approval.pk} was used by another identical "
                "call; nothing was executed by this one. Call again to ask for a new approval.",
                _decision(tool_call),
            )
    return await _execute(ctx, agent, upstream, tool, args, tool_call)


async def _rate_limited(agent: Agent, tool: str) -> types.CallToolResult | None:
    """The agent's tool-call rate (``OPSCONSOLE_RATE_LIMITS["tool_calls"]``), counted in the
    same windows as its HTTP calls: over it, the call is refused (nothing is decided, nothing
    runs, the run goes on) with how long to wait, as the HTTP gateway's 429 and Retry-After."""
    if not settings.OPSCONSOLE_RATE_LIMITS.get(ToolCallRateThrottle.scope):
        return None
    throttle = ToolCallRateThrottle()
    if await sync_to_async(throttle.allow_request)(SimpleNamespace(user=agent), None):
        return None
    wait = int(throttle.wait())
    return _answer(
        f"RATE_LIMITED by the agent ops console: this agent is over its rate of tool calls. "
        f"Nothing was executed. Wait {wait} s, then call {tool} again; the run goes on.",
        {
            "error": "rate_limited",  # the HTTP gateway's error code for its 429
            "decision": None,
            "stop_reason": None,
            "detail": f"over {settings.OPSCONSOLE_RATE_LIMITS[ToolCallRateThrottle.scope]}",
            "retry_after_seconds": wait,
            "run_id": None,
            "tool_call_id": None,
        },
    )


def _held_guard(name: str) -> core.Guard:
    """A tool whose upstream definition changed is held: the slow path denies it."""
    return core.Guard(
        f"SELECT 1 FROM {McpToolSeen._meta.db_table} "
        "WHERE tool = %s AND definition_hash <> accepted_hash",
        [name],
        "mcp_held",
    )


async def _fast_decision(
    ctx: ServerRequestContext[Any, Any],
    agent: Agent,
    name: str,
    args: dict[str, Any],
    upstream: Upstream,
    run_id: int | None,
) -> tuple[ToolCall, core.Outcome] | None:
    """The gateway core's decision (``agents.gateway.core``) for a call it can serve: a plain
    allow in a run this process already knows. None hands the call to the slow path (which
    decides it from scratch: the core's attempt was rolled back)."""
    assert ctx.request is not None
    key_hash = ctx.request.scope.get("opsconsole.key_hash")
    if core.problems() or not key_hash or name in upstream.held or run_id is None:
        return None
    started = time.perf_counter()
    request = core.CallRequest(
        run_id=run_id, key_hash=key_hash, tool=name, args=args, idempotency_key=None, secure=False
    )
    try:
        entry = await core.key_lookup_async(key_hash)
        if entry.agent_id != agent.pk:
            return None
        decided = await core.decide_async(request, entry, timezone.now(), [_held_guard(name)])
    except core.Fallback as fallback:
        core.FAST_PATH.labels(f"mcp_{fallback.reason}").inc()
        return None
    except Exception as exc:  # noqa: BLE001 - the database: the slow path answers (or fails)
        logger.warning("MCP fast decision failed, deciding on the slow path: %s", exc)
        return None
    core.decision_observed(started)
    core.spawn(core.broadcast_run(decided))
    tool_call = ToolCall(
        pk=decided.payload["id"],
        run_id=run_id,
        tool=name,
        decision=Decision.ALLOW,
        stop_reason="",
        detail="",
    )
    return tool_call, decided


def _finish_with_session(ctx: ServerRequestContext[Any, Any], agent: Agent, run_id: int) -> None:
    """Once per handshake session: its run ends (succeeded) when the session does."""
    connection = getattr(ctx.session, "_connection", None)  # the SDK's per-connection teardown
    if connection is None or connection.state.get("opsconsole.run") == run_id:
        return
    connection.state["opsconsole.run"] = run_id

    async def finish() -> None:
        await Recording.settled(run_id)
        await sync_to_async(services.mcp_session_run_finish)(agent=agent, run_id=run_id)

    connection.exit_stack.push_async_callback(finish)


# --- the server -----------------------------------------------------------------------------


def build_server() -> Server[Any]:
    pools: list[UpstreamPool] = []  # the pool of the running session manager

    @asynccontextmanager
    async def lifespan(server: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        pool = UpstreamPool()
        pools.append(pool)
        try:
            yield {"pool": pool}
        finally:
            pools.remove(pool)
            await pool.close()

    def input_schema(name: str) -> dict[str, Any] | None:
        """A tool's input schema as the upstream last listed it, for the SDK's check of a
        stateless call's ``Mcp-Param-*`` headers. Without it the SDK would run the whole
        ``tools/list`` (policy, kill switch, every upstream) before every such call; None (not
        listed yet, held, no such tool) skips that check, as the SDK does."""
        server, _, tool = name.partition(".")
        for pool in pools:
            upstream = pool.get(server)
            if upstream is None or name in upstream.held:
                continue
            for listed in upstream.tools:
                if listed.name == tool:
                    return listed.input_schema
        return None

    return Server(
        "agent-ops-console",
        version="1",
        title="Agent Ops Console",
        instructions=(
            "Tools are served through the agent ops console, which decides every call before it "
            "runs: a refused or stopped call answers with isError and says what to do; a write "
            "may wait for a human's approval."
        ),
        lifespan=lifespan,
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
