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
from typing import Any, Final

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import stop_reasons
from agents.gateway.breakers import breaker_admit, breaker_forced_detail, breaker_record
from agents.gateway.budgets import budget_crossings_notify, effective_budgets, usage_fractions
from agents.gateway.decisions import (
    REFUSABLE,
    args_errors,
    finish_verdict,
    output_errors,
    refusal_applies,
    result_stop_reason,
    spend_verdict,
    step_verdict,
    tool_call_verdict,
)
from agents.gateway.metrics import observed_decision
from agents.models import (
    ACTIVE_STATUSES,
    BIGINT_COLUMN_MAX,
    INT_COLUMN_MAX,
    USD_COLUMN_MAX,
    Agent,
    AgentMode,
    BreakerState,
    Decision,
    EventKind,
    KillSwitchMode,
    Run,
    RunSource,
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


# People's containment is never merely observed: the kill switch, a pause and a disable stop an
# agent in observe mode as they stop any other (an on-call engineer must be able to rely on them,
# and the migration path rehearses them).
CONTAINMENT: Final = frozenset({stop_reasons.KILL_SWITCH, stop_reasons.AGENT_DISABLED})


def observing(agent: Agent, reason: str | None = None) -> bool:
    """Whether the gateway answers this agent allow although it decided ``reason`` (observe
    mode): every policy decision is only recorded, containment (``CONTAINMENT``) still stops.
    Its ``mode`` is read with its enabled state under the run's lock (``agent_state_hold``)."""
    return agent.mode == AgentMode.OBSERVE and reason not in CONTAINMENT


def run_would_stop_record(run: Run, reason: str, detail: str, at: str) -> list[str]:
    """Observe mode: enforce would have stopped the run here. The first such stop is the run's
    headline ("would have stopped at call 16 with max_tool_calls"); later ones are kept on their
    own records (tool calls, trace events). Returns the run fields to save."""
    assert stop_reasons.is_valid(reason), reason
    fields = []
    if run.mode != AgentMode.OBSERVE:
        run.mode = AgentMode.OBSERVE
        fields.append("mode")
    if not run.would_stop_reason:
        run.would_stop_reason, run.would_stop_detail, run.would_stop_at = reason, detail, at
        fields += ["would_stop_reason", "would_stop_detail", "would_stop_at"]
    return fields


def _observed_counts(run: Run) -> None:
    """Observe mode lets counters run past their budgets, never past what their columns hold."""
    run.steps = min(run.steps, INT_COLUMN_MAX)
    run.tool_calls = min(run.tool_calls, INT_COLUMN_MAX)
    run.tokens = min(run.tokens, BIGINT_COLUMN_MAX)
    run.usd = min(run.usd, USD_COLUMN_MAX)


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
            # Containment refuses the run in either mode (``observing``).
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
                mode=agent.mode,
                **effective,
            )
            started = {
                "task": task,
                "agent_version": agent_version,
                "budgets": run.budgets(),
                "requested": budgets,
                "policy_version": policy.version,
            }
            if observing(agent):
                started["mode"] = AgentMode.OBSERVE
            run_event_record(run, EventKind.RUN_STARTED, started)
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
    """Count one model step; the step that would exceed a budget stops the run instead.

    In observe mode that step is counted all the same and the stop is recorded as would-have."""
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
        observed = observing(agent, reason)
        data = {
            "kind": kind,
            "model": model,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "usd": str(usd),
            "latency_ms": latency_ms,
            "summary": summary[:2000],
            "counted": reason is None or observed,
        }
        refused = ""
        if reason is not None:
            refused = f"step {run.steps + 1} refused"
            if reason == stop_reasons.AGENT_DISABLED:
                refused += f": the agent is {agent.disabled_detail}"
            if observed:
                data |= {"would_stop_reason": reason, "would_stop_detail": refused}
        run_event_record(run, EventKind.STEP, data)
        if reason is not None and not observed:
            _stop(run, reason, refused)
            return StepOutcome(Decision.STOP, reason, run)
        fields = ["steps", "tokens", "usd", "last_activity_at"]
        if reason is not None:
            fields += run_would_stop_record(run, reason, refused, at=f"step {run.steps + 1}")
        before = usage_fractions(run)
        run.steps += 1
        run.tokens += tokens
        run.usd += usd
        if observed:
            _observed_counts(run)
        budget_crossings_notify(run, before)
        run.last_activity_at = timezone.now()
        run.save(update_fields=fields)
        run_broadcast(run)
        return StepOutcome("continue", None, run)


# --- the step gate: ask before the model call, report its usage after ---------------------------
#
# The ticket of a gated step is its trace event (kind ``step``, ``data.gate``): the usage report
# fills that event in, so the run's timeline, replays and rollups see one step with its usage.


@dataclass
class StepGateOutcome:
    decision: str
    stop_reason: str | None
    run: Run
    detail: str = ""
    ticket: int | None = None
    step: int | None = None


@observed_decision("step")
def step_gate(
    *,
    agent: Agent,
    run_id: int,
    model: str = "",
    estimate_tokens: int = 0,
    estimate_usd: Decimal = Decimal("0"),
    idempotency_key: str | None = None,
) -> StepGateOutcome:
    """Ask before a model call: the step is counted now, or the call that would break
    ``max_steps``, ``max_seconds``, ``max_tokens`` or ``max_usd`` (usage so far plus the
    estimate) is refused, and the run stopped, before it is paid for. The same checks as
    ``step_record`` (``step_verdict``). A retried ``idempotency_key`` returns the first answer."""
    with transaction.atomic():
        run = run_lock_for_agent(agent=agent, run_id=run_id)
        if idempotency_key:
            earlier = (
                TraceEvent.objects.filter(
                    run=run, kind=EventKind.STEP, data__idempotency_key=idempotency_key
                )
                .only("pk", "data")
                .first()
            )
            if earlier is not None and earlier.data.get("counted"):
                return StepGateOutcome(
                    "continue", None, run, ticket=earlier.pk, step=earlier.data.get("step")
                )
        if not run.is_active:
            return StepGateOutcome(Decision.STOP, run.stop_reason, run)
        reason = step_verdict(
            run=run,
            agent_enabled=agent.enabled,
            kill_mode=kill_switch_current().mode,
            tokens=estimate_tokens,
            usd=estimate_usd,
        )
        observed = observing(agent, reason)
        step = run.steps + 1
        data: dict[str, Any] = {
            "kind": "llm",
            "gate": True,
            "step": step,
            "model": model,
            "estimate_tokens": estimate_tokens,
            "estimate_usd": str(estimate_usd),
            "tokens_in": 0,
            "tokens_out": 0,
            "usd": "0",
            "latency_ms": 0,
            "summary": "",
            "counted": reason is None or observed,
            "reported": False,
            "idempotency_key": idempotency_key or "",
        }
        refused = ""
        if reason is not None:
            refused = f"step {step} refused before the model call"
            if estimate_tokens or estimate_usd:
                refused += f" (estimate: {estimate_tokens} tokens, ${estimate_usd})"
            if reason == stop_reasons.AGENT_DISABLED:
                refused += f": the agent is {agent.disabled_detail}"
            if observed:
                data |= {"would_stop_reason": reason, "would_stop_detail": refused}
        event = run_event_record(run, EventKind.STEP, data)
        if reason is not None and not observed:
            _stop(run, reason, refused)
            return StepGateOutcome(Decision.STOP, reason, run, detail=refused)
        fields = ["steps", "last_activity_at"]
        if reason is not None:
            fields += run_would_stop_record(run, reason, refused, at=f"step {step}")
        before = usage_fractions(run)
        run.steps += 1
        if observed:
            _observed_counts(run)
        budget_crossings_notify(run, before)
        run.last_activity_at = timezone.now()
        run.save(update_fields=fields)
        run_broadcast(run)
        return StepGateOutcome("continue", None, run, ticket=event.pk, step=step)


@observed_decision("step_usage")
def step_usage_report(
    *,
    agent: Agent,
    run_id: int,
    ticket: int,
    tokens_in: int = 0,
    tokens_out: int = 0,
    usd: Decimal = Decimal("0"),
    latency_ms: int = 0,
    summary: str = "",
) -> StepOutcome:
    """Record what a gated model call used. The call was made and paid for, so its usage is
    recorded whatever happened since (even on a run that has ended); if it took the run past
    ``max_tokens`` or ``max_usd``, the run stops with that reason. An identical repeated report
    gets the same answer; a different one for the same ticket is a 409."""
    with transaction.atomic():
        run = run_lock_for_agent(agent=agent, run_id=run_id)
        event = TraceEvent.objects.filter(
            pk=ticket, run=run, kind=EventKind.STEP, data__gate=True
        ).first()
        if event is None or not event.data.get("counted"):
            raise NotFound(f"No step ticket {ticket} in run {run_id}.")
        usage = {
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "usd": str(usd),
            "latency_ms": latency_ms,
            "summary": summary[:2000],
        }
        usage_hash = canonical_hash(usage)
        if event.data.get("reported"):
            if event.data.get("usage_hash") != usage_hash:
                raise Conflict(
                    "A different usage was already reported for this step.",
                    code="usage_already_reported",
                )
            if run.is_active:
                return StepOutcome("continue", None, run)
            return StepOutcome(Decision.STOP, run.stop_reason, run)
        tokens = tokens_in + tokens_out
        reason = spend_verdict(run=run, tokens=tokens, usd=usd) if run.is_active else None
        event.data |= usage | {"reported": True, "usage_hash": usage_hash}
        event.save(update_fields=["data"])
        before = usage_fractions(run)
        run.tokens += tokens
        run.usd += usd
        _observed_counts(run)  # never past what the columns hold
        fields = ["tokens", "usd"]
        if run.is_active:
            run.last_activity_at = timezone.now()
            fields.append("last_activity_at")
            budget_crossings_notify(run, before)
        step = event.data.get("step")
        detail = f"step {step} used {tokens} tokens and ${usd}"
        if reason is not None and observing(agent):
            fields += run_would_stop_record(run, reason, detail, at=f"step {step}")
            reason = None
        run.save(update_fields=fields)
        if reason is not None:
            _stop(run, reason, detail)
            return StepOutcome(Decision.STOP, reason, run)
        run_broadcast(run)
        if not run.is_active:
            return StepOutcome(Decision.STOP, run.stop_reason, run)
        return StepOutcome("continue", None, run)


@observed_decision("tool_call")
def tool_call_decide(
    *,
    agent: Agent,
    run_id: int,
    tool: str,
    args: dict[str, Any],
    idempotency_key: str | None = None,
    denied: str = "",
) -> ToolCall:
    """Decide a tool call before it happens, in the order SPEC.md gives.

    Returns the ToolCall (unsaved, with id None, when the run had already ended). ``denied``:
    a front door's own reason to deny the tool at the allowlist's place (``tool_call_verdict``).
    With the policy's ``on_refusal: refuse_call`` a denial or invalid arguments refuse only
    that call (decision ``refused``; the run goes on) until ``max_refusals``.
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
                denied=denied,
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
    denied: str = "",
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
        denied=denied,
    )
    rule, reason, detail = verdict.rule, verdict.stop_reason, verdict.detail
    if reason is not None and (forced := breaker_forced_detail(breaker)):
        detail = forced  # a person degraded the tool: say who, until when and why
    if reason == stop_reasons.AGENT_DISABLED:
        detail = agent.disabled_detail  # "paused by <who>: <why>"

    now = timezone.now()
    observed = observing(agent, reason)
    if reason is not None and not observed:
        refused, detail = _refusal(
            run=run, policy=policy, agent=agent, reason=reason, detail=detail
        )
        tool_call = _new_tool_call(
            run=run,
            tool=tool,
            args=args,
            args_hash=args_hash,
            decision=Decision.REFUSED if refused else Decision.STOP,
            idempotency_key=idempotency_key,
            stop_reason=reason,
            detail=detail,
            counted=False,
            created_at=now,
        )
        tool_call.save(force_insert=True)
        _no_approval(tool_call)
        run_event_record(run, EventKind.TOOL_CALL, _call_data(tool_call), tool_call)
        if refused:  # the run goes on; the call was not counted against its budgets
            run.last_activity_at = now
            run.save(update_fields=["last_activity_at"])
            run_broadcast(run)
        else:
            _stop(run, reason, detail)
        return tool_call

    if reason is None and breaker is not None and breaker.state == BreakerState.HALF_OPEN:
        breaker.trial_calls_left -= 1
        breaker.save(update_fields=["trial_calls_left", "updated_at"])
    decision = verdict.decision
    fields = ["tool_calls", "usd", "last_activity_at"]
    would: dict[str, Any] = {}
    if observed:
        # Decided and recorded as in enforce; answered allow, and counted as the call happens.
        would = {"would_decision": decision, "would_stop_reason": reason or "", "detail": detail}
        at = f"call {run.tool_calls + 1}"
        if reason is not None and _would_refuse(run=run, policy=policy, agent=agent, reason=reason):
            would["would_decision"] = Decision.REFUSED  # enforce would refuse only this call
            fields += _would_wait_record(run, Decision.REFUSED, tool)
        elif reason is not None:
            fields += run_would_stop_record(run, reason, detail, at=at)
        else:
            fields += _would_wait_record(run, decision, tool)
        decision = Decision.ALLOW
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
        **would,
    )
    tool_call.save(force_insert=True)
    if decision == Decision.ALLOW:
        _no_approval(tool_call)
    before = usage_fractions(run)
    run.tool_calls += 1
    run.usd += rule.cost_usd
    if observed:
        _observed_counts(run)
    run.last_activity_at = now
    budget_crossings_notify(run, before)
    run_event_record(run, EventKind.TOOL_CALL, _call_data(tool_call), tool_call)
    if decision == Decision.PENDING_APPROVAL:
        # The run waits for people from now: that time does not count against max_seconds.
        approval_open(run=run, tool_call=tool_call, rule=rule, now=now)
        fields += ["status", "waiting_since"]
    run.save(update_fields=fields)
    run_broadcast(run)
    return tool_call


def _refusal(
    *, run: Run, policy: Policy, agent: Agent, reason: str, detail: str
) -> tuple[bool, str]:
    """Whether a stopping verdict refuses only the call (``refusal_applies``), and its detail:
    the refusal past ``max_refusals`` stops the run and says why."""
    action, limit = policy.refusal_rule(agent.name)
    if action != "refuse_call" or reason.partition(":")[0] not in REFUSABLE:
        return False, detail
    refusals = ToolCall.objects.filter(run=run, decision=Decision.REFUSED).count()
    if refusal_applies(policy=policy, agent_name=agent.name, stop_reason=reason, refusals=refusals):
        return True, detail
    return False, f"{detail}; {refusals} calls refused already (max_refusals: {limit})"


def _would_refuse(*, run: Run, policy: Policy, agent: Agent, reason: str) -> bool:
    """Observe mode: whether enforce would have refused only this call (``on_refusal:
    refuse_call``), counting the calls it would have refused before."""
    if reason.partition(":")[0] not in REFUSABLE:
        return False
    refusals = ToolCall.objects.filter(run=run, would_decision=Decision.REFUSED).count()
    return refusal_applies(
        policy=policy, agent_name=agent.name, stop_reason=reason, refusals=refusals
    )


def _would_wait_record(run: Run, would_decision: str, tool: str) -> list[str]:
    """Observe mode: a call enforce would have allowed, or held for a reviewer (counted on the
    run, the first such tool kept for its headline). Returns the run fields to save."""
    fields = []
    if run.mode != AgentMode.OBSERVE:
        run.mode = AgentMode.OBSERVE
        fields.append("mode")
    if would_decision == Decision.PENDING_APPROVAL:
        run.would_approvals += 1
        fields.append("would_approvals")
        if not run.would_approval_tool:
            run.would_approval_tool = tool
            fields.append("would_approval_tool")
    return fields


def _no_approval(tool_call: ToolCall) -> None:
    """Remember that a fresh call has no approval request, so answering it costs no query."""
    ToolCall.approval.related.set_cached_value(tool_call, None)


def _call_data(tool_call: ToolCall) -> dict[str, Any]:
    data = {
        "tool_call_id": tool_call.pk,
        "tool": tool_call.tool,
        "args": tool_call.args,
        "decision": tool_call.decision,
        "stop_reason": tool_call.stop_reason,
        "detail": tool_call.detail,
        "cost_usd": str(tool_call.cost_usd),
    }
    if tool_call.would_decision:
        data["would_decision"] = tool_call.would_decision
        data["would_stop_reason"] = tool_call.would_stop_reason
    return data


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
            if tool_call.would_decision:  # observe mode answered the first report valid
                return ResultOutcome(True, run.stop_reason or None, [], run)
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
            detail = (
                f"the result of {tool_call.tool} cost {spend}"
                if stop == stop_reasons.MAX_USD
                else "; ".join(errors)
            )
            if stop is not None and observing(agent):
                # The output goes to the agent (its record keeps the errors) and the spend counts.
                at = f"result of {tool_call.tool} (call {tool_call.pk})"
                update += run_would_stop_record(run, stop, detail, at=at)
                run.usd = min(run.usd + spend, USD_COLUMN_MAX)
                run.save(update_fields=[*update, "usd"])
                run_broadcast(run)
                return ResultOutcome(True, None, [], run)
            if stop is not None:
                _stop(run, stop, detail)
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
        if observing(agent, reason):
            run.save(update_fields=run_would_stop_record(run, reason, detail, at="finish"))
            return _finish(run, status=status, answer=answer, error=error)
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
        "pk",
        "started_at",
        "ended_at",
        "max_seconds",
        "waited_seconds",
        "waiting_since",
        "mode",
        "last_activity_at",
    )
    now = timezone.now()
    stopped = 0
    for run in candidates:
        assert run.max_seconds is not None  # the query above leaves out runs without one
        limit = run.max_seconds + grace_seconds
        # An observed run may work past max_seconds (a would-have stop at its next call): only
        # one that has really gone silent that long is ended.
        silent = (
            (now - run.last_activity_at).total_seconds() > limit
            if run.mode == AgentMode.OBSERVE
            else run.seconds > limit
        )
        if silent and run_stop(
            run_id=run.pk,
            reason=stop_reasons.MAX_SECONDS,
            detail="silent past max_seconds; stopped by the server",
            statuses=(RunStatus.RUNNING,),
        ):
            stopped += 1
    return stopped


def runs_stop_all_for_kill_switch(*, batch: int = 200) -> int:
    """Kill switch ``stop_all``: stop every active run now, not only at its next call.

    Runs of agents in observe mode stop too (containment is never only observed). Runs built from
    OpenTelemetry traces cannot be stopped from here (the agent does not ask the console): each
    records the kill switch as its would-have stop."""
    traced = Run.objects.filter(status__in=ACTIVE_STATUSES, source=RunSource.OTLP)
    traced.filter(would_stop_reason="").update(
        would_stop_reason=stop_reasons.KILL_SWITCH,
        would_stop_detail="kill switch: stop_all",
        would_stop_at="kill switch sweep",
    )
    stopped = 0
    while True:
        ids = list(
            Run.objects.filter(status__in=ACTIVE_STATUSES)
            .exclude(source=RunSource.OTLP)
            .values_list("pk", flat=True)[:batch]
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
