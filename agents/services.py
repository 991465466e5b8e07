"""The gateway and every other write on agents, runs and policy.

Each decision happens in one transaction with the run row locked (``SELECT ... FOR UPDATE``), so
no number of parallel requests can push a counter past its budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import stop_reasons
from agents.decisions import output_errors, result_stop_reason, step_verdict, tool_call_verdict
from agents.metrics import observed_decision
from agents.models import (
    ACTIVE_STATUSES,
    Agent,
    AgentKey,
    BreakerState,
    Decision,
    EventKind,
    PolicyVersion,
    Run,
    RunStatus,
    ToolBreaker,
    ToolCall,
    TraceEvent,
)
from agents.policy import (
    BUDGET_NAMES,
    PolicyError,
    ToolRule,
    canonical_hash,
    normalise,
)
from agents.selectors import kill_switch_current, policy_current
from approvals.models import ApprovalRequest, ApprovalStatus
from opsconsole import keys
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, Invalid, NotFound
from opsconsole.live import broadcast, group_for
from opsconsole.models import KillSwitchMode
from opsconsole.notifications import notify

AGENT_NAME = re.compile(r"[-a-zA-Z0-9_]{1,100}")

# --- agents and keys --------------------------------------------------------------------------


def _broadcast_agent(name: str) -> None:
    """Open agents pages refresh their table (after commit; see opsconsole/live.py)."""
    broadcast([group_for("agents")], "agents.changed", {"name": name})


def agent_create(
    *, name: str, actor: str, description: str = "", tools: list[str] | None = None
) -> Agent:
    """Create an agent; ``tools`` (if given) becomes its own allowlist in a new policy version."""
    if not AGENT_NAME.fullmatch(name or ""):
        raise Invalid(
            "An agent name is 1-100 letters, digits, '-' or '_' (e.g. support-bot).",
            code="invalid_name",
        )
    with transaction.atomic():
        if Agent.objects.filter(name=name).exists():
            raise Conflict(f"An agent named {name!r} already exists.", code="agent_exists")
        agent = Agent.objects.create(name=name, description=description)
        audit_record(
            actor=actor,
            action="agent.create",
            target_type="agent",
            target_id=name,
            after={"name": name},
        )
        _broadcast_agent(name)
        if tools:

            def add_allowlist(document: dict[str, Any]) -> bool:
                document["agents"][name] = {"allow": sorted(set(tools)), "budgets": {}}
                return True

            policy_amend(
                change=add_allowlist, author=actor, reason=f"allowlist for new agent {name}"
            )
    return agent


def agent_key_issue(*, agent: Agent, actor: str, label: str = "") -> tuple[AgentKey, str]:
    """Returns the key row and the raw key, which is never stored and never shown again."""
    raw = keys.generate(keys.AGENT_KEY_PREFIX)
    with transaction.atomic():
        row = AgentKey.objects.create(
            agent=agent, label=label, prefix=keys.display_prefix(raw), key_hash=keys.digest(raw)
        )
        audit_record(
            actor=actor,
            action="agent_key.issue",
            target_type="agent",
            target_id=agent.name,
            after={"key": row.prefix, "label": label},
        )
        _broadcast_agent(agent.name)
    return row, raw


def agent_key_revoke(*, key_id: int, actor: str) -> AgentKey:
    with transaction.atomic():
        row = AgentKey.objects.select_for_update().select_related("agent").filter(pk=key_id).first()
        if row is None:
            raise NotFound(f"No key {key_id}.")
        if row.revoked_at is None:
            row.revoked_at = timezone.now()
            row.save(update_fields=["revoked_at"])
            audit_record(
                actor=actor,
                action="agent_key.revoke",
                target_type="agent",
                target_id=row.agent.name,
                before={"key": row.prefix},
                after={"key": row.prefix, "revoked": True},
            )
            _broadcast_agent(row.agent.name)
    return row


def agent_set_enabled(*, agent: Agent, enabled: bool, actor: str, reason: str = "") -> Agent:
    """Per-agent kill: a disabled agent's runs stop with ``agent_disabled`` at their next call."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if agent.enabled == enabled:
            return agent
        before = {"enabled": agent.enabled}
        agent.enabled = enabled
        agent.disabled_reason = "" if enabled else reason
        agent.save(update_fields=["enabled", "disabled_reason"])
        audit_record(
            actor=actor,
            action="agent.enable" if enabled else "agent.disable",
            target_type="agent",
            target_id=agent.name,
            reason=reason,
            before=before,
            after={"enabled": enabled},
        )
        _broadcast_agent(agent.name)
    return agent


# --- policy -----------------------------------------------------------------------------------


def policy_publish(
    *,
    document: dict[str, Any],
    author: str,
    reason: str,
    restored_from: int | None = None,
    based_on: int | None = None,
) -> PolicyVersion:
    """Validate and save a new policy version; it governs the very next gateway decision.

    ``based_on`` is the version an editor started from: if another version was published since,
    the save is refused (409 ``policy_changed``) instead of silently undoing that change.
    """
    try:
        normalised = normalise(document)
    except PolicyError as exc:
        raise Invalid(exc.errors, code="invalid_policy") from None
    with transaction.atomic():
        latest = PolicyVersion.objects.select_for_update().order_by("-number").first()
        if based_on is not None and latest is not None and latest.number != based_on:
            raise Conflict(
                f"Policy v{latest.number} was published by {latest.author} "
                f"({latest.reason or 'no reason given'}) while you were editing v{based_on}. "
                "Your changes were not saved; check them against the current version and save "
                "again.",
                code="policy_changed",
            )
        number = (latest.number + 1) if latest else 1
        version = PolicyVersion.objects.create(
            number=number,
            document=normalised,
            author=author,
            reason=reason,
            restored_from=restored_from,
        )
        audit_record(
            actor=author,
            action="policy.publish",
            target_type="policy",
            target_id=number,
            reason=reason,
            before=latest.document if latest else None,
            after=normalised,
        )
        # Open policy pages say a new version is in force (editors keep their drafts).
        broadcast(
            [group_for("policy")],
            "policy.changed",
            {"version": number, "author": author, "reason": reason},
        )
    return version


def policy_amend(
    *,
    change: Callable[[dict[str, Any]], bool],
    author: str,
    reason: str,
    attempts: int = 3,
) -> PolicyVersion | None:
    """A programmatic change to the current policy (a rule, a new agent's allowlist).

    ``change`` edits a copy of the current document in place and returns False when there is
    nothing to do (then nothing is published). Published ``based_on`` the version it read, so a
    version someone published in between is never undone: the change is applied again on top of
    it (``attempts`` times at most).
    """
    for attempt in range(1, attempts + 1):
        current = policy_current()
        document = json.loads(json.dumps(current.document))
        if not change(document):
            return None
        try:
            return policy_publish(
                document=document, author=author, reason=reason, based_on=current.version
            )
        except Conflict as error:
            if error.code != "policy_changed" or attempt == attempts:
                raise
    return None


def policy_restore(*, number: int, author: str, reason: str) -> PolicyVersion:
    old = PolicyVersion.objects.filter(number=number).first()
    if old is None:
        raise NotFound(f"No policy version {number}.")
    return policy_publish(
        document=old.document,
        author=author,
        reason=reason or f"restore v{number}",
        restored_from=number,
    )


# --- runs -------------------------------------------------------------------------------------


def _effective_budgets(requested: dict[str, Any], ceilings: dict[str, Any]) -> dict[str, Any]:
    """The smaller of what the run asked for and the policy ceiling; None is no limit."""
    result = {}
    for name in BUDGET_NAMES:
        asked, ceiling = requested.get(name), ceilings.get(name)
        values = [v for v in (asked, ceiling) if v is not None]
        value = min(values) if values else None
        if name == "max_usd" and value is not None:
            value = Decimal(str(value))
        result[name] = value
    return result


def _run_event(
    run: Run, kind: str, data: dict[str, Any], tool_call: ToolCall | None = None
) -> TraceEvent:
    return TraceEvent.objects.create(
        run=run, kind=kind, data=data, tool_call=tool_call, at=timezone.now()
    )


def _broadcast_run(run: Run) -> None:
    broadcast(
        [group_for("runs"), group_for("run", run.pk)],
        "run.updated",
        {
            "id": run.pk,
            "agent": run.agent.name,
            "status": run.status,
            "stop_reason": run.stop_reason,
            "usage": run.usage(),
            "budgets": run.budgets(),
        },
    )


def run_start(
    *,
    agent: Agent,
    task: str,
    agent_version: str = "",
    budgets: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[Run, bool]:
    """Start a run. Returns (run, created); a retried idempotency key returns the original run."""
    budgets = budgets or {}
    metadata = metadata or {}
    request_hash = canonical_hash(
        {"task": task, "agent_version": agent_version, "budgets": budgets, "metadata": metadata}
    )
    try:
        with transaction.atomic():
            if idempotency_key:
                existing = Run.objects.filter(agent=agent, idempotency_key=idempotency_key).first()
                if existing is not None:
                    return _idempotent_run(existing, request_hash), False
            if kill_switch_current().mode == KillSwitchMode.STOP_ALL:
                raise Conflict(
                    "The kill switch is on (stop_all): no run may start.",
                    code="run_refused",
                    extra={"stop_reason": stop_reasons.KILL_SWITCH},
                )
            if not agent.enabled:
                raise Conflict(
                    "This agent is disabled.",
                    code="run_refused",
                    extra={"stop_reason": stop_reasons.AGENT_DISABLED},
                )
            policy = policy_current()
            effective = _effective_budgets(budgets, policy.ceilings(agent.name))
            now = timezone.now()
            run = Run.objects.create(
                agent=agent,
                task=task,
                agent_version=agent_version,
                metadata=metadata,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
                policy_version=policy.version,
                started_at=now,
                last_activity_at=now,
                **effective,
            )
            _run_event(
                run,
                EventKind.RUN_STARTED,
                {
                    "task": task,
                    "agent_version": agent_version,
                    "budgets": run.budgets(),
                    "requested": budgets,
                    "policy_version": policy.version,
                },
            )
            _broadcast_run(run)
            return run, True
    except IntegrityError:
        # Two retries with the same key raced; the other one created the run.
        existing = Run.objects.filter(agent=agent, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return _idempotent_run(existing, request_hash), False


def _idempotent_run(existing: Run, request_hash: str) -> Run:
    if existing.request_hash != request_hash:
        raise Conflict(
            "This idempotency_key was used for a different request.", code="idempotency_key_reused"
        )
    return existing


def _lock_run(*, agent: Agent, run_id: int) -> Run:
    run = Run.objects.select_for_update().filter(pk=run_id, agent=agent).first()
    if run is None:
        raise NotFound(f"No run {run_id} for this agent.")
    run.agent = agent
    return run


def _stop_run(run: Run, reason: str, detail: str = "", *, cancel_approvals: bool = True) -> None:
    """End a locked, active run with one stop reason. A stopped run stays stopped."""
    assert stop_reasons.is_valid(reason), reason
    now = timezone.now()
    run.status = RunStatus.STOPPED
    run.stop_reason = reason
    run.ended_at = now
    run.last_activity_at = now
    run.save(update_fields=["status", "stop_reason", "ended_at", "last_activity_at"])
    _run_event(run, EventKind.STOP, {"stop_reason": reason, "detail": detail})
    if cancel_approvals:
        _cancel_pending_approvals(run, reason)
    _broadcast_run(run)


def _cancel_pending_approvals(run: Run, reason: str) -> None:
    """A run that stopped for another reason no longer needs its pending writes decided."""
    pending = list(
        ApprovalRequest.objects.select_for_update().filter(run=run, status=ApprovalStatus.PENDING)
    )
    if not pending:
        return
    now = timezone.now()
    for request in pending:
        request.status = ApprovalStatus.CANCELLED
        request.decided_at = now
        request.save(update_fields=["status", "decided_at"])
        ToolCall.objects.filter(pk=request.tool_call_id).update(
            decision=Decision.STOP, stop_reason=reason
        )
    broadcast(
        [group_for("approvals")],
        "approvals.removed",
        {"ids": [r.pk for r in pending], "status": ApprovalStatus.CANCELLED},
    )


@dataclass
class StepOutcome:
    decision: str
    stop_reason: str | None
    run: Run


@observed_decision("step")
def step_record(
    *,
    agent: Agent,
    run_id: int,
    model: str = "",
    tokens_in: int = 0,
    tokens_out: int = 0,
    usd: Decimal = Decimal("0"),
    latency_ms: int = 0,
    summary: str = "",
    kind: str = "llm",
) -> StepOutcome:
    """Count one model step; the step that would exceed a budget stops the run instead."""
    with transaction.atomic():
        run = _lock_run(agent=agent, run_id=run_id)
        if not run.is_active:
            return StepOutcome(Decision.STOP, run.stop_reason, run)
        tokens = tokens_in + tokens_out
        reason = step_verdict(
            run=run,
            agent_enabled=agent.enabled,
            kill_mode=kill_switch_current().mode,
            tokens=tokens,
            usd=usd,
        )
        data = {
            "kind": kind,
            "model": model,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "usd": str(usd),
            "latency_ms": latency_ms,
            "summary": summary[:2000],
            "counted": reason is None,
        }
        _run_event(run, EventKind.STEP, data)
        if reason is not None:
            _stop_run(run, reason, f"step {run.steps + 1} refused")
            return StepOutcome(Decision.STOP, reason, run)
        before = _usage_fractions(run)
        run.steps += 1
        run.tokens += tokens
        run.usd += usd
        _notice_budget_crossings(run, before)
        run.last_activity_at = timezone.now()
        run.save(update_fields=["steps", "tokens", "usd", "last_activity_at"])
        _broadcast_run(run)
        return StepOutcome("continue", None, run)


@observed_decision("tool_call")
def tool_call_decide(
    *,
    agent: Agent,
    run_id: int,
    tool: str,
    args: dict[str, Any],
    idempotency_key: str | None = None,
) -> ToolCall:
    """Decide a tool call before it happens, in the order SPEC.md gives.

    Returns the ToolCall (unsaved, with id None, when the run had already ended).
    """
    args_hash = canonical_hash(args)
    try:
        with transaction.atomic():
            run = _lock_run(agent=agent, run_id=run_id)
            if idempotency_key:
                existing = ToolCall.objects.filter(run=run, idempotency_key=idempotency_key).first()
                if existing is not None:
                    return _idempotent_tool_call(existing, tool, args_hash)
            if not run.is_active:
                return ToolCall(
                    run=run,
                    tool=tool,
                    args=args,
                    args_hash=args_hash,
                    decision=Decision.STOP,
                    stop_reason=run.stop_reason,
                )
            return _decide(
                run=run,
                agent=agent,
                tool=tool,
                args=args,
                args_hash=args_hash,
                idempotency_key=idempotency_key,
            )
    except IntegrityError:
        existing = ToolCall.objects.filter(
            run_id=run_id, run__agent=agent, idempotency_key=idempotency_key
        ).first()
        if existing is None:
            raise
        return _idempotent_tool_call(existing, tool, args_hash)


def _idempotent_tool_call(existing: ToolCall, tool: str, args_hash: str) -> ToolCall:
    if existing.tool != tool or existing.args_hash != args_hash:
        raise Conflict(
            "This idempotency_key was used for a different tool call.",
            code="idempotency_key_reused",
        )
    return existing


def _decide(
    *,
    run: Run,
    agent: Agent,
    tool: str,
    args: dict[str, Any],
    args_hash: str,
    idempotency_key: str | None,
) -> ToolCall:
    breaker: ToolBreaker | None = None

    def degraded(rule: ToolRule) -> bool:
        nonlocal breaker
        breaker, refused = _breaker_admit(tool, rule)
        return refused

    verdict = tool_call_verdict(
        policy=policy_current(),
        tool=tool,
        args=args,
        agent_name=agent.name,
        agent_enabled=agent.enabled,
        kill_mode=kill_switch_current().mode,
        run=run,
        repeats=lambda: _repeats(run, tool, args_hash),
        calls_of_tool=lambda: _calls_of(run, tool),
        degraded=degraded,
    )
    rule, reason, detail = verdict.rule, verdict.stop_reason, verdict.detail

    now = timezone.now()
    if reason is not None:
        tool_call = ToolCall.objects.create(
            run=run,
            tool=tool,
            args=args,
            args_hash=args_hash,
            idempotency_key=idempotency_key,
            decision=Decision.STOP,
            stop_reason=reason,
            detail=detail,
            counted=False,
            created_at=now,
        )
        _no_approval(tool_call)
        _run_event(run, EventKind.TOOL_CALL, _call_data(tool_call), tool_call)
        _stop_run(run, reason, detail)
        return tool_call

    if breaker is not None and breaker.state == BreakerState.HALF_OPEN:
        breaker.trial_calls_left -= 1
        breaker.save(update_fields=["trial_calls_left", "updated_at"])
    decision = verdict.decision
    tool_call = ToolCall.objects.create(
        run=run,
        tool=tool,
        args=args,
        args_hash=args_hash,
        idempotency_key=idempotency_key,
        decision=decision,
        counted=True,
        cost_usd=rule.cost_usd,
        created_at=now,
    )
    if decision == Decision.ALLOW:
        _no_approval(tool_call)
    before = _usage_fractions(run)
    run.tool_calls += 1
    run.usd += rule.cost_usd
    run.last_activity_at = now
    _notice_budget_crossings(run, before)
    fields = ["tool_calls", "usd", "last_activity_at"]
    _run_event(run, EventKind.TOOL_CALL, _call_data(tool_call), tool_call)
    if decision == Decision.PENDING_APPROVAL:
        request = ApprovalRequest.objects.create(
            tool_call=tool_call,
            run=run,
            agent=agent,
            tool=tool,
            args=args,
            args_hash=args_hash,
            reviewers_required=rule.reviewers,
            created_at=now,
            expires_at=now + timedelta(seconds=rule.timeout_seconds),
        )
        run.status = RunStatus.WAITING_APPROVAL
        fields.append("status")
        _run_event(
            run,
            EventKind.APPROVAL_REQUESTED,
            {
                "approval_id": request.pk,
                "tool": tool,
                "reviewers_required": rule.reviewers,
                "expires_at": request.expires_at.isoformat(),
            },
            tool_call,
        )
        broadcast([group_for("approvals")], "approvals.added", {"id": request.pk})
        notify(
            event="approval.requested",
            key=f"approval:{request.pk}:requested",
            payload={
                "id": request.pk,
                "run": run.pk,
                "agent": agent.name,
                "tool": tool,
                "args": args,
                "reviewers_required": rule.reviewers,
                "expires_at": request.expires_at.isoformat(),
            },
        )
    run.save(update_fields=fields)
    _broadcast_run(run)
    return tool_call


def _no_approval(tool_call: ToolCall) -> None:
    """Remember that a fresh call has no approval request, so answering it costs no query."""
    ToolCall.approval.related.set_cached_value(tool_call, None)


BUDGET_WARNING_FRACTION = 0.8
_COUNTERS = {
    "max_steps": "steps",
    "max_tool_calls": "tool_calls",
    "max_tokens": "tokens",
    "max_usd": "usd",
}


def _usage_fractions(run: Run) -> dict[str, float]:
    fractions = {}
    for budget, counter in _COUNTERS.items():
        limit = getattr(run, budget)
        if limit:
            fractions[budget] = float(getattr(run, counter)) / float(limit)
    if run.max_seconds:
        fractions["max_seconds"] = run.seconds / run.max_seconds
    return fractions


def _notice_budget_crossings(run: Run, before: dict[str, float]) -> None:
    """Notify once per run and budget when usage crosses 80 % of it."""
    after = _usage_fractions(run)
    for budget, fraction in after.items():
        if fraction >= BUDGET_WARNING_FRACTION > before.get(budget, 0.0):
            notify(
                event="budget.crossed_80",
                key=f"run:{run.pk}:{budget}:80",
                payload={
                    "run": run.pk,
                    "agent": run.agent.name,
                    "budget": budget,
                    "fraction": round(fraction, 3),
                    "usage": run.usage(),
                    "budgets": run.budgets(),
                },
            )


def _call_data(tool_call: ToolCall) -> dict[str, Any]:
    return {
        "tool_call_id": tool_call.pk,
        "tool": tool_call.tool,
        "args": tool_call.args,
        "decision": tool_call.decision,
        "stop_reason": tool_call.stop_reason,
        "detail": tool_call.detail,
        "cost_usd": str(tool_call.cost_usd),
    }


def _repeats(run: Run, tool: str, args_hash: str) -> int:
    return ToolCall.objects.filter(run=run, tool=tool, args_hash=args_hash, counted=True).count()


def _calls_of(run: Run, tool: str) -> int:
    return ToolCall.objects.filter(run=run, tool=tool, counted=True).count()


def _breaker_admit(tool: str, rule: ToolRule) -> tuple[ToolBreaker | None, bool]:
    """Returns (locked breaker or None, degraded?). An open breaker turns half-open after its cool-down."""
    breaker = ToolBreaker.objects.select_for_update().filter(tool=tool).first()
    if breaker is None or breaker.state == BreakerState.CLOSED:
        return breaker, False
    if breaker.state == BreakerState.OPEN:
        cooled = breaker.opened_at and timezone.now() - breaker.opened_at >= timedelta(
            seconds=rule.breaker["cooldown_seconds"]
        )
        if not cooled:
            return breaker, True
        breaker.state = BreakerState.HALF_OPEN
        breaker.trial_calls_left = rule.breaker["trial_calls"]
        breaker.save(update_fields=["state", "trial_calls_left", "updated_at"])
        _broadcast_breaker(breaker)
    return breaker, breaker.trial_calls_left <= 0


def _broadcast_breaker(breaker: ToolBreaker) -> None:
    broadcast(
        [group_for("breakers")], "breaker.updated", {"tool": breaker.tool, "state": breaker.state}
    )


def _breaker_record(tool: str, ok: bool, rule: ToolRule) -> None:
    """Update the tool's breaker from one reported result (in the caller's transaction)."""
    breaker, _ = ToolBreaker.objects.get_or_create(tool=tool)
    breaker = ToolBreaker.objects.select_for_update().get(pk=breaker.pk)
    settings = rule.breaker
    now = timezone.now()
    if breaker.state == BreakerState.HALF_OPEN:
        if ok:
            breaker.state, breaker.opened_at, breaker.window_start = BreakerState.CLOSED, None, now
        else:
            breaker.state, breaker.opened_at = BreakerState.OPEN, now
        breaker.failure_rate = 0.0 if ok else 1.0
        breaker.save()
        _broadcast_breaker(breaker)
        return
    if breaker.state == BreakerState.OPEN:
        return  # late results of calls allowed before it opened change nothing
    recent = ToolCall.objects.filter(tool=tool, reported_at__isnull=False)
    if breaker.window_start:
        recent = recent.filter(reported_at__gte=breaker.window_start)
    results = list(
        recent.order_by("-reported_at").values_list("result_ok", flat=True)[: settings["window"]]
    )
    failures = sum(1 for r in results if not r)
    rate = failures / len(results) if results else 0.0
    breaker.failure_rate = rate
    if len(results) >= settings["min_calls"] and rate >= settings["failure_rate"]:
        breaker.state, breaker.opened_at = BreakerState.OPEN, now
        breaker.save()
        _broadcast_breaker(breaker)
    else:
        breaker.save(update_fields=["failure_rate", "updated_at"])


@dataclass
class ResultOutcome:
    valid: bool
    stop_reason: str | None
    errors: list[str] = field(default_factory=list)
    run: Run | None = None


def tool_call_report(
    *,
    agent: Agent,
    tool_call_id: int,
    ok: bool,
    output: Any = None,
    error: str = "",
    latency_ms: int | None = None,
    usd: Decimal | None = None,
) -> ResultOutcome:
    """Record an allowed call's result, validate the output, update the breaker and spend."""
    with transaction.atomic():
        tool_call = ToolCall.objects.filter(pk=tool_call_id, run__agent=agent).first()
        if tool_call is None:
            raise NotFound(f"No tool call {tool_call_id} for this agent.")
        run = _lock_run(agent=agent, run_id=tool_call.run_id)
        tool_call = ToolCall.objects.select_for_update().get(pk=tool_call_id)
        result_hash = canonical_hash({"ok": ok, "output": output, "error": error or ""})
        if tool_call.reported_at is not None:
            same = tool_call.result_hash == result_hash
            if not same:
                raise Conflict(
                    "A different result was already reported for this call.",
                    code="result_already_reported",
                )
            return ResultOutcome(
                bool(tool_call.valid), run.stop_reason or None, tool_call.validation_errors, run
            )
        if tool_call.decision != Decision.ALLOW:
            raise Conflict(
                f"This call was not allowed (decision: {tool_call.decision}); do not run the tool.",
                code="not_allowed",
            )
        rule = policy_current().tool_rule(tool_call.tool)
        errors = output_errors(rule, output) if ok else []
        now = timezone.now()
        tool_call.result_ok = ok
        tool_call.output = output if not errors else None
        tool_call.error = error or ""
        tool_call.latency_ms = latency_ms
        tool_call.result_usd = usd
        tool_call.valid = not errors
        tool_call.validation_errors = errors
        tool_call.reported_at = now
        tool_call.result_hash = result_hash
        tool_call.save()
        _run_event(
            run,
            EventKind.TOOL_RESULT,
            {
                "tool_call_id": tool_call.pk,
                "tool": tool_call.tool,
                "ok": ok,
                "valid": not errors,
                "errors": errors,
                "error": error,
                "latency_ms": latency_ms,
                "usd": str(usd or 0),
                "output": output if not errors else None,
            },
            tool_call,
        )
        _breaker_record(tool_call.tool, ok, rule)
        if run.is_active:
            run.last_activity_at = now
            update = ["last_activity_at"]
            spend = usd or Decimal("0")
            stop = result_stop_reason(run=run, tool=tool_call.tool, spend=spend, errors=errors)
            if stop == stop_reasons.MAX_USD:
                _stop_run(run, stop, f"the result of {tool_call.tool} cost {spend}")
            elif stop is not None:
                _stop_run(run, stop, "; ".join(errors))
            else:
                before = _usage_fractions(run)
                run.usd += spend
                _notice_budget_crossings(run, before)
                update.append("usd")
                run.save(update_fields=update)
                _broadcast_run(run)
        return ResultOutcome(not errors, run.stop_reason or None, errors, run)


def run_finish(*, agent: Agent, run_id: int, status: str, answer: str = "", error: str = "") -> Run:
    with transaction.atomic():
        run = _lock_run(agent=agent, run_id=run_id)
        if not run.is_active:
            raise Conflict(
                "This run has already ended.",
                code="run_ended",
                extra={"stop_reason": run.stop_reason},
            )
        now = timezone.now()
        run.status = RunStatus.SUCCEEDED if status == "succeeded" else RunStatus.FAILED
        run.stop_reason = stop_reasons.OK if status == "succeeded" else stop_reasons.ERROR
        run.answer, run.error = answer, error
        run.ended_at = run.last_activity_at = now
        run.save(
            update_fields=[
                "status",
                "stop_reason",
                "answer",
                "error",
                "ended_at",
                "last_activity_at",
            ]
        )
        _run_event(
            run,
            EventKind.FINISH,
            {
                "status": run.status,
                "stop_reason": run.stop_reason,
                "answer": answer[:4000],
                "error": error[:4000],
            },
        )
        _cancel_pending_approvals(run, run.stop_reason)
        _broadcast_run(run)
        return run


def run_stop(
    *, run_id: int, reason: str, detail: str = "", statuses: tuple[str, ...] = ACTIVE_STATUSES
) -> bool:
    """Stop a run in one of ``statuses`` for a server-side reason (reaper, kill switch).

    False if it is no longer in one of them (already ended, say)."""
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("agent").filter(pk=run_id).first()
        if run is None or run.status not in statuses:
            return False
        _stop_run(run, reason, detail)
        return True


def run_cancel(*, run_id: int, actor: str, reason: str = "") -> Run:
    """An operator stops one run; the agent sees ``cancelled`` at its next gateway call."""
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("agent").filter(pk=run_id).first()
        if run is None:
            raise NotFound(f"No run {run_id}.")
        if not run.is_active:
            raise Conflict(
                "This run has already ended.",
                code="run_ended",
                extra={"stop_reason": run.stop_reason},
            )
        before = {"status": run.status}
        _stop_run(run, stop_reasons.CANCELLED, reason or f"cancelled by {actor}")
        audit_record(
            actor=actor,
            action="run.cancel",
            target_type="run",
            target_id=run.pk,
            reason=reason,
            before=before,
            after={"status": run.status, "stop_reason": run.stop_reason},
        )
        return run


def runs_reap_silent(*, grace_seconds: int) -> int:
    """Stop runs silent past their max_seconds (plus grace) with ``max_seconds``.

    A run waiting for an approval is not silent: its agent is long-polling, and the request's
    own expiry ends it with ``approval_timeout`` if nobody decides.
    """
    now = timezone.now()
    candidates = Run.objects.filter(
        status=RunStatus.RUNNING, max_seconds__isnull=False
    ).values_list("pk", "started_at", "max_seconds")
    stopped = 0
    for run_id, started_at, max_seconds in candidates:
        if now - started_at > timedelta(seconds=max_seconds + grace_seconds) and run_stop(
            run_id=run_id,
            reason=stop_reasons.MAX_SECONDS,
            detail="silent past max_seconds; stopped by the server",
            statuses=(RunStatus.RUNNING,),
        ):
            stopped += 1
    return stopped


def runs_stop_all_for_kill_switch(*, batch: int = 200) -> int:
    """Kill switch ``stop_all``: stop every active run now, not only at its next call."""
    stopped = 0
    while True:
        ids = list(
            Run.objects.filter(status__in=ACTIVE_STATUSES).values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return stopped
        progress = 0
        for run_id in ids:
            if run_stop(
                run_id=run_id, reason=stop_reasons.KILL_SWITCH, detail="kill switch: stop_all"
            ):
                progress += 1
        stopped += progress
        if progress == 0:
            return stopped


def traces_purge(*, older_than_days: int, batch: int = 5000) -> int:
    """Remove trace payloads of runs that ended more than ``older_than_days`` ago, in batches.

    Run rows (the summaries: budgets, usage, stop reason) and the audit log are kept; tool calls
    keep their decision but lose their arguments and outputs.
    """
    cutoff = timezone.now() - timedelta(days=older_than_days)
    old_runs = Run.objects.filter(ended_at__lt=cutoff)
    removed = 0
    while True:
        ids = list(TraceEvent.objects.filter(run__in=old_runs).values_list("pk", flat=True)[:batch])
        if not ids:
            break
        removed += TraceEvent.objects.filter(pk__in=ids).delete()[0]
    while True:
        ids = list(
            ToolCall.objects.filter(run__in=old_runs)
            .exclude(args={}, output=None)
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            break
        ToolCall.objects.filter(pk__in=ids).update(args={}, output=None)
    return removed
