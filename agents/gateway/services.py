"""The gateway's use cases: run_start, step_record, tool_call_decide, tool_call_report, run_finish,
and the server-side stops (an operator's cancel, the reaper, the kill switch's stop_all).

Each decision happens in one transaction with the run row locked (``SELECT ... FOR UPDATE``), so
no number of parallel requests can push a counter past its budget. What can be worked out
before the lock is (a tool call's arguments against its schema), so no request holds the lock
longer than its decision needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import stop_reasons
from agents.gateway.breakers import breaker_admit, breaker_forced_detail, breaker_record
from agents.gateway.budgets import budget_crossings_notify, effective_budgets, usage_fractions
from agents.gateway.decisions import (
    args_errors,
    finish_verdict,
    output_errors,
    result_stop_reason,
    step_verdict,
    tool_call_verdict,
)
from agents.gateway.metrics import observed_decision
from agents.models import (
    ACTIVE_STATUSES,
    Agent,
    BreakerState,
    Decision,
    EventKind,
    KillSwitchMode,
    Run,
    RunStatus,
    ToolBreaker,
    ToolCall,
    TraceEvent,
)
from agents.policy.document import (
    MAX_TOOL_NAME,
    Policy,
    ToolRule,
    canonical_hash,
)
from agents.policy.selectors import kill_switch_current, policy_current
from agents.runs.services import (
    agent_state_hold,
    run_broadcast,
    run_event_record,
    run_lock_for_agent,
    run_stop_locked,
    run_wait_end,
)
from approvals.services import approval_open, approvals_cancel_for_run
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, Invalid, NotFound


def _stop(run: Run, reason: str, detail: str = "") -> None:
    """End a locked, active run and settle its pending approval requests with the same reason."""
    run_stop_locked(run, reason, detail)
    approvals_cancel_for_run(run=run, reason=reason)


def _new_tool_call(
    *, run: Run, tool: str, args: dict[str, Any], args_hash: str, decision: str, **fields: Any
) -> ToolCall:
    """An unsaved tool call of this run; the caller saves it (or answers with it unsaved)."""
    return ToolCall(run=run, tool=tool, args=args, args_hash=args_hash, decision=decision, **fields)


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
            if not agent_state_hold(agent).enabled:
                raise Conflict(
                    f"This agent is {agent.disabled_detail}.",
                    code="run_refused",
                    extra={"stop_reason": stop_reasons.AGENT_DISABLED},
                )
            policy = policy_current()
            effective = effective_budgets(budgets, policy.ceilings(agent.name))
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
            run_event_record(
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
            run_broadcast(run)
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
        run = run_lock_for_agent(agent=agent, run_id=run_id)
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
        run_event_record(run, EventKind.STEP, data)
        if reason is not None:
            refused = f"step {run.steps + 1} refused"
            if reason == stop_reasons.AGENT_DISABLED:
                refused += f": the agent is {agent.disabled_detail}"
            _stop(run, reason, refused)
            return StepOutcome(Decision.STOP, reason, run)
        before = usage_fractions(run)
        run.steps += 1
        run.tokens += tokens
        run.usd += usd
        budget_crossings_notify(run, before)
        run.last_activity_at = timezone.now()
        run.save(update_fields=["steps", "tokens", "usd", "last_activity_at"])
        run_broadcast(run)
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
    if not 1 <= len(tool) <= MAX_TOOL_NAME:
        # The API's serializer also holds the name to the MCP alphabet; whatever the front door,
        # a longer name could not be recorded in its stop reason (``<kind>:<tool>``, 200 chars).
        raise Invalid(f"tool must be 1-{MAX_TOOL_NAME} characters.", code="invalid_tool")
    args_hash = canonical_hash(args)
    precheck = _args_precheck(agent=agent, tool=tool, args=args)
    try:
        with transaction.atomic():
            run = run_lock_for_agent(agent=agent, run_id=run_id)
            if idempotency_key:
                existing = ToolCall.objects.filter(run=run, idempotency_key=idempotency_key).first()
                if existing is not None:
                    return _idempotent_tool_call(existing, tool, args_hash)
            if not run.is_active:
                return _new_tool_call(
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
                precheck=precheck,
            )
    except IntegrityError:
        existing = ToolCall.objects.filter(
            run_id=run_id, run__agent=agent, idempotency_key=idempotency_key
        ).first()
        if existing is None:
            raise
        return _idempotent_tool_call(existing, tool, args_hash)


class _PolicySeen:
    """The policy this worker last decided with (a process-wide cache of one object).

    The argument check before the lock runs against it; its result is used under the lock only
    if the policy in force there is this very object (``policy_current`` keeps one object per
    version), else the check runs again there. After a policy change, each worker's first call
    is checked under the lock; a cold worker reads the policy first.
    """

    policy: Policy | None = None


@dataclass(frozen=True)
class _ArgsCheck:
    """A call's arguments checked against one policy's rule for the tool, before the lock."""

    policy: Policy
    errors: list[str]


def _args_precheck(*, agent: Agent, tool: str, args: dict[str, Any]) -> _ArgsCheck | None:
    """Validate the arguments outside the transaction, so a slow schema never holds the run's
    lock. None when there is nothing to check (the tool is not allowed, or has no schema)."""
    policy = _PolicySeen.policy or policy_current()
    if not policy.is_allowed(tool, agent.name):
        return None
    rule = policy.tool_rule_for(tool, agent.name)
    if not rule.args_schema:
        return None
    return _ArgsCheck(policy, args_errors(rule, args))


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
    precheck: _ArgsCheck | None = None,
) -> ToolCall:
    breaker: ToolBreaker | None = None
    policy = _PolicySeen.policy = policy_current()

    def degraded(rule: ToolRule) -> bool:
        nonlocal breaker
        breaker, refused = breaker_admit(tool, rule)
        return refused

    def invalid_args(rule: ToolRule) -> list[str]:
        if precheck is not None and precheck.policy is policy:
            return precheck.errors
        return args_errors(rule, args)  # the policy changed since the precheck

    verdict = tool_call_verdict(
        policy=policy,
        tool=tool,
        args=args,
        agent_name=agent.name,
        agent_enabled=agent.enabled,
        kill_mode=kill_switch_current().mode,
        run=run,
        repeats=lambda: _repeats(run, tool, args_hash),
        calls_of_tool=lambda: _calls_of(run, tool),
        degraded=degraded,
        invalid_args=invalid_args,
    )
    rule, reason, detail = verdict.rule, verdict.stop_reason, verdict.detail
    if reason is not None and (forced := breaker_forced_detail(breaker)):
        detail = forced  # a person degraded the tool: say who, until when and why
    if reason == stop_reasons.AGENT_DISABLED:
        detail = agent.disabled_detail  # "paused by <who>: <why>"

    now = timezone.now()
    if reason is not None:
        tool_call = _new_tool_call(
            run=run,
            tool=tool,
            args=args,
            args_hash=args_hash,
            decision=Decision.STOP,
            idempotency_key=idempotency_key,
            stop_reason=reason,
            detail=detail,
            counted=False,
            created_at=now,
        )
        tool_call.save(force_insert=True)
        _no_approval(tool_call)
        run_event_record(run, EventKind.TOOL_CALL, _call_data(tool_call), tool_call)
        _stop(run, reason, detail)
        return tool_call

    if breaker is not None and breaker.state == BreakerState.HALF_OPEN:
        breaker.trial_calls_left -= 1
        breaker.save(update_fields=["trial_calls_left", "updated_at"])
    decision = verdict.decision
    tool_call = _new_tool_call(
        run=run,
        tool=tool,
        args=args,
        args_hash=args_hash,
        decision=decision,
        idempotency_key=idempotency_key,
        counted=True,
        cost_usd=rule.cost_usd,
        created_at=now,
    )
    tool_call.save(force_insert=True)
    if decision == Decision.ALLOW:
        _no_approval(tool_call)
    before = usage_fractions(run)
    run.tool_calls += 1
    run.usd += rule.cost_usd
    run.last_activity_at = now
    budget_crossings_notify(run, before)
    fields = ["tool_calls", "usd", "last_activity_at"]
    run_event_record(run, EventKind.TOOL_CALL, _call_data(tool_call), tool_call)
    if decision == Decision.PENDING_APPROVAL:
        # The run waits for people from now: that time does not count against max_seconds.
        approval_open(run=run, tool_call=tool_call, rule=rule, now=now)
        fields += ["status", "waiting_since"]
    run.save(update_fields=fields)
    run_broadcast(run)
    return tool_call


def _no_approval(tool_call: ToolCall) -> None:
    """Remember that a fresh call has no approval request, so answering it costs no query."""
    ToolCall.approval.related.set_cached_value(tool_call, None)


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
        run = run_lock_for_agent(agent=agent, run_id=tool_call.run_id)
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
        run_event_record(
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
        breaker_record(tool_call.tool, ok, rule)
        if run.is_active:
            run.last_activity_at = now
            update = ["last_activity_at"]
            spend = usd or Decimal("0")
            stop = result_stop_reason(run=run, tool=tool_call.tool, spend=spend, errors=errors)
            if stop == stop_reasons.MAX_USD:
                _stop(run, stop, f"the result of {tool_call.tool} cost {spend}")
            elif stop is not None:
                _stop(run, stop, "; ".join(errors))
            else:
                before = usage_fractions(run)
                run.usd += spend
                budget_crossings_notify(run, before)
                update.append("usd")
                run.save(update_fields=update)
                run_broadcast(run)
        return ResultOutcome(not errors, run.stop_reason or None, errors, run)


def run_finish(*, agent: Agent, run_id: int, status: str, answer: str = "", error: str = "") -> Run:
    """The agent ends its run ``succeeded`` (``ok``) or ``failed`` (``error``).

    What would stop its next step stops the run instead, and the finish is a 409 with that stop
    reason, as a finish of an ended run is: the kill switch's stop_all (``kill_switch``), a
    disabled agent (``agent_disabled``), active time past max_seconds (``max_seconds``).
    """
    with transaction.atomic():
        run = run_lock_for_agent(agent=agent, run_id=run_id)
        if not run.is_active:
            raise Conflict(
                "This run has already ended.",
                code="run_ended",
                extra={"stop_reason": run.stop_reason},
            )
        reason = finish_verdict(
            run=run, agent_enabled=agent.enabled, kill_mode=kill_switch_current().mode
        )
        if reason is None:
            return _finish(run, status=status, answer=answer, error=error)
        detail = f"the agent's finish ({status}) was refused"
        if reason == stop_reasons.AGENT_DISABLED:
            detail += f" (the agent is {agent.disabled_detail})"
        _stop(run, reason, f"{detail}: {error[:2000]}" if error else detail)
    raise Conflict(
        f"The run was stopped with {reason} instead of finishing {status}.",
        code="run_stopped",
        extra={"stop_reason": reason},
    )


def _finish(run: Run, *, status: str, answer: str, error: str) -> Run:
    """End a locked, active run as the agent says (the caller checked it may)."""
    now = timezone.now()
    waits = run_wait_end(run, now)
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
            *waits,
        ]
    )
    run_event_record(
        run,
        EventKind.FINISH,
        {
            "status": run.status,
            "stop_reason": run.stop_reason,
            "answer": answer[:4000],
            "error": error[:4000],
        },
    )
    approvals_cancel_for_run(run=run, reason=run.stop_reason)
    run_broadcast(run)
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
        _stop(run, reason, detail)
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
        _stop(run, stop_reasons.CANCELLED, reason or f"cancelled by {actor}")
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
    """Stop runs silent past their max_seconds (plus grace) of active time with ``max_seconds``.

    Active time leaves out the time a run waited for people (``Run.seconds``), as every
    decision does. A run waiting for an approval now is not silent: its agent is long-polling,
    its active time stands still, and the request's own expiry ends it with
    ``approval_timeout`` if nobody decides.
    """
    candidates = Run.objects.filter(status=RunStatus.RUNNING, max_seconds__isnull=False).only(
        "pk", "started_at", "ended_at", "max_seconds", "waited_seconds", "waiting_since"
    )
    stopped = 0
    for run in candidates:
        assert run.max_seconds is not None  # the query above leaves out runs without one
        if run.seconds > run.max_seconds + grace_seconds and run_stop(
            run_id=run.pk,
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
