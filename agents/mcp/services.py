"""The MCP endpoint's use cases (sync, called from the async server through ``sync_to_async``).

The decisions themselves are the gateway's (``tool_call_decide`` / ``tool_call_report``): this
module only adds what MCP needs around them: the run of a session, the pins of upstream tool
definitions, the retry of a call held for approval, the single use of an approval, and the
containment checks that release a held call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents import stop_reasons
from agents.gateway.services import (
    ResultOutcome,
    run_finish,
    run_start,
    run_stop,
    tool_call_decide,
    tool_call_report,
)
from agents.models import (
    Agent,
    BreakerState,
    Decision,
    KillSwitchMode,
    McpToolSeen,
    ToolBreaker,
    ToolCall,
)
from agents.policy.document import Policy, canonical_hash, kill_switch_turns_off
from agents.policy.selectors import kill_switch_current, policy_current
from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_expire_if_due
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, NotFound

HELD_DETAIL = (
    "its definition changed upstream since an admin accepted it; it is held until an admin "
    "accepts the change (Policy > MCP servers)"
)

# (agent id, run key) -> run id: a session's run is looked up once per process.
_runs: dict[tuple[int, str], int] = {}


@dataclass(frozen=True)
class RunRefused:
    """The run could not start (the kill switch's stop_all, a disabled agent)."""

    stop_reason: str
    detail: str


def mcp_run_resolve(*, agent: Agent, key: str, label: str) -> int | RunRefused:
    """The run named by ``key`` (a session, or a name the client gave), started on first use.

    A run is started once per key (its idempotency key), in any worker; a stopped run stays
    stopped, as every run does.
    """
    cached = _runs.get((agent.pk, key))
    if cached is not None:
        return cached
    try:
        run, _ = run_start(
            agent=agent,
            task=f"MCP: {label}",
            idempotency_key=f"mcp:{key}",
            metadata={"front_door": "mcp", "run_key": key},
        )
    except Conflict as exc:
        reason = (exc.extra or {}).get("stop_reason") or stop_reasons.KILL_SWITCH
        return RunRefused(reason, exc.detail)
    if len(_runs) > 10_000:
        _runs.clear()
    _runs[(agent.pk, key)] = run.pk
    return run.pk


def mcp_run_known(*, agent: Agent, key: str) -> int | None:
    """The run of ``key`` if this process has resolved it already (no query)."""
    return _runs.get((agent.pk, key))


def mcp_session_run_finish(*, agent: Agent, run_id: int) -> None:
    """A handshake session ended (the host closed it, or it idled out): its run succeeded,
    unless it had already ended (a stop stays the run's end)."""
    with contextlib.suppress(Conflict, NotFound):
        run_finish(agent=agent, run_id=run_id, status="succeeded", answer="the MCP session ended")
    for cached in [key for key, value in _runs.items() if value == run_id]:
        _runs.pop(cached, None)


def definition_of(tool: dict[str, Any]) -> dict[str, Any]:
    """What pins an upstream tool: its title, description and schemas (annotations are hints
    the console does not trust, so a change of them is not a change of the tool)."""
    return {
        "title": tool.get("title"),
        "description": tool.get("description") or "",
        "inputSchema": tool.get("inputSchema") or {},
        "outputSchema": tool.get("outputSchema"),
    }


def suggested_effect(tool: dict[str, Any]) -> str:
    """The effect an upstream's annotations suggest: read only when it says ``readOnlyHint``
    (the spec's defaults are pessimistic: anything else may write)."""
    annotations = tool.get("annotations") or {}
    return "read" if annotations.get("readOnlyHint") is True else "write"


def mcp_tools_seen_record(*, server: str, tools: list[dict[str, Any]]) -> set[str]:
    """Record the tools an upstream lists (as wire dicts, names prefixed ``<server>.``).

    A tool seen for the first time is pinned as it is; a pinned tool whose definition differs
    is held. Returns the names held now.
    """
    seen = {row.tool: row for row in McpToolSeen.objects.filter(server=server)}
    now = timezone.now()
    held = set()
    for tool in tools:
        name = tool["name"]
        definition = definition_of(tool)
        digest = canonical_hash(definition)
        row = seen.get(name)
        if row is None:
            McpToolSeen.objects.create(
                server=server,
                tool=name,
                definition=definition,
                definition_hash=digest,
                accepted_hash=digest,
                accepted_definition=definition,
                suggested_effect=suggested_effect(tool),
                first_seen_at=now,
            )
            continue
        if row.definition_hash != digest:
            McpToolSeen.objects.filter(pk=row.pk).update(
                definition=definition, definition_hash=digest, changed_at=now
            )
            row.definition_hash = digest
        if row.held:
            held.add(name)
    return held


def mcp_tool_accept(*, tool: str, actor: str) -> McpToolSeen:
    """An admin accepts a changed upstream tool definition: it is pinned as it is now."""
    with transaction.atomic():
        row = McpToolSeen.objects.select_for_update().filter(tool=tool).first()
        if row is None:
            raise NotFound(f"No MCP tool {tool} has been seen.")
        if not row.held:
            raise Conflict(f"{tool} has no change waiting.", code="not_held")
        before = row.accepted_definition
        row.accepted_hash = row.definition_hash
        row.accepted_definition = row.definition
        row.accepted_by = actor
        row.save(update_fields=["accepted_hash", "accepted_definition", "accepted_by"])
        audit_record(
            actor=actor,
            action="mcp.tool_accept",
            target_type="tool",
            target_id=tool,
            before={"definition": before},
            after={"definition": row.definition},
        )
        return row


def _held_detail(tool: str) -> str:
    row = McpToolSeen.objects.filter(tool=tool).only("definition_hash", "accepted_hash").first()
    return HELD_DETAIL if row is not None and row.held else ""


def mcp_call_begin(
    *, agent: Agent, run_id: int, tool: str, args: dict[str, Any], policy: Policy | None = None
) -> ToolCall:
    """Decide a ``tools/call``, or find the call it retries.

    A call whose tool needs approval first looks for the same call (run, tool, exact
    arguments) still waiting for its approval, or approved and not yet used: the retry the
    pending answer asked for. Anything else is a new decision by the gateway.
    """
    policy = policy or policy_current()
    allowed = policy.is_allowed(tool, agent.name)
    if allowed and policy.tool_rule_for(tool, agent.name).approval_required:
        now = timezone.now()
        retried = (
            ToolCall.objects.filter(
                run_id=run_id, run__agent=agent, tool=tool, args_hash=canonical_hash(args)
            )
            .filter(
                Q(approval__status=ApprovalStatus.PENDING)
                | Q(
                    approval__status=ApprovalStatus.APPROVED,
                    approval__consumed_at__isnull=True,
                    approval__expires_at__gt=now,
                )
            )
            .select_related("approval", "run")
            .order_by("-pk")
            .first()
        )
        if retried is not None:
            return retried
    # A held definition matters only for a tool the allowlist lets through.
    denied = _held_detail(tool) if allowed else ""
    return tool_call_decide(agent=agent, run_id=run_id, tool=tool, args=args, denied=denied)


@dataclass(frozen=True)
class CallStart:
    """What a ``tools/call`` needs before anything runs, read in one trip to the database: the
    policy in force, the run (or why none may start) and the gateway's decision."""

    policy: Policy
    refused_run: RunRefused | None
    tool_call: ToolCall | None
    refusals: int  # refused calls in the run so far (only counted for a refused call)


def mcp_call_start(
    *, agent: Agent, key: str, label: str, tool: str, args: dict[str, Any]
) -> CallStart:
    policy = policy_current()
    run = mcp_run_resolve(agent=agent, key=key, label=label)
    if isinstance(run, RunRefused):
        return CallStart(policy, run, None, 0)
    tool_call = mcp_call_begin(agent=agent, run_id=run, tool=tool, args=args, policy=policy)
    refusals = (
        refusals_in_run(run_id=tool_call.run_id) if tool_call.decision == Decision.REFUSED else 0
    )
    return CallStart(policy, None, tool_call, refusals)


def mcp_call_state(*, agent: Agent, tool_call_id: int) -> ToolCall:
    """A held call as it is now (its approval expired first if its time is up)."""
    tool_call = (
        ToolCall.objects.select_related("approval", "run")
        .filter(pk=tool_call_id, run__agent=agent)
        .first()
    )
    if tool_call is None:
        raise NotFound(f"No tool call {tool_call_id} for this agent.")
    request = getattr(tool_call, "approval", None)
    if request is not None and approval_expire_if_due(request):
        return mcp_call_state(agent=agent, tool_call_id=tool_call_id)
    return tool_call


def mcp_containment(*, agent: Agent, tool: str) -> tuple[str, str] | None:
    """What stops a call held for approval (or approved, before it runs) now: the kill switch,
    a paused or disabled agent, a degraded tool. None when nothing does."""
    fresh = Agent.objects.filter(pk=agent.pk).first()
    mode = kill_switch_current().mode
    if mode == KillSwitchMode.STOP_ALL:
        return stop_reasons.KILL_SWITCH, "kill switch: stop_all"
    if fresh is None or not fresh.enabled:
        return stop_reasons.AGENT_DISABLED, fresh.disabled_detail if fresh else "agent removed"
    if kill_switch_turns_off(mode, policy_current().tool_rule_for(tool, agent.name)):
        return stop_reasons.KILL_SWITCH, f"kill switch: {mode} ({tool})"
    breaker = ToolBreaker.objects.filter(tool=tool).first()
    if breaker is not None and (
        breaker.forced_at(timezone.now()) or breaker.state == BreakerState.OPEN
    ):
        detail = (
            f"degraded by {breaker.forced_by}: {breaker.forced_reason}"
            if breaker.forced_at(timezone.now())
            else "circuit breaker open"
        )
        return stop_reasons.for_tool(stop_reasons.TOOL_DEGRADED, tool), detail
    return None


def mcp_run_stop(*, run_id: int, reason: str, detail: str) -> None:
    """Stop a run whose held call was released by the kill switch, a pause or a degrade
    (its pending approvals are cancelled with the same reason)."""
    run_stop(run_id=run_id, reason=reason, detail=detail)


def mcp_approval_claim(*, tool_call: ToolCall) -> bool:
    """Use an approved call's approval once: True for the one caller that may execute it."""
    request = getattr(tool_call, "approval", None)
    if request is None:
        return True  # allowed without approval
    return (
        ApprovalRequest.objects.filter(
            pk=request.pk, status=ApprovalStatus.APPROVED, consumed_at__isnull=True
        ).update(consumed_at=timezone.now())
        == 1
    )


def mcp_result_report(
    *,
    agent: Agent,
    tool_call_id: int,
    ok: bool,
    output: Any,
    error: str,
    latency_ms: int,
) -> ResultOutcome:
    """The upstream's answer, reported and validated by the gateway as an HTTP agent's is."""
    return tool_call_report(
        agent=agent,
        tool_call_id=tool_call_id,
        ok=ok,
        output=output,
        error=error[:4000],
        latency_ms=latency_ms,
        usd=Decimal("0"),
    )


def refusals_in_run(*, run_id: int) -> int:
    return ToolCall.objects.filter(run_id=run_id, decision=Decision.REFUSED).count()
