"""Deciding, expiring and cancelling approval requests.

Locks are taken run first, then request (the gateway's order), so a reviewer and an agent never
deadlock; the transition is claimed with the request row locked, so two reviewers deciding at
once get one winner and one 409.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agents import stop_reasons
from agents.models import (
    Decision,
    EventKind,
    Run,
    RunStatus,
    ToolCall,
)
from agents.policy.document import ToolRule, kill_switch_turns_off
from agents.policy.selectors import kill_switch_current, policy_current
from agents.runs.services import (
    run_broadcast,
    run_event_record,
    run_stop_locked,
    run_wait_begin,
    run_wait_end,
)
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus, Verdict
from approvals.waits import approval_wake
from opsconsole.audit import actor_name, audit_record
from opsconsole.errors import Conflict, Invalid, NotFound
from opsconsole.live import broadcast, group_for
from opsconsole.models import WebhookEndpoint
from opsconsole.notifications import notify


def _lock(request_id: int) -> tuple[Run, ApprovalRequest]:
    run_id = ApprovalRequest.objects.filter(pk=request_id).values_list("run_id", flat=True).first()
    if run_id is None:
        raise NotFound(f"No approval request {request_id}.")
    run = Run.objects.select_for_update().select_related("agent").get(pk=run_id)
    request = ApprovalRequest.objects.select_for_update().get(pk=request_id)
    return run, request


def _close(run: Run, request: ApprovalRequest, status: str, *, reason: str | None) -> None:
    """Settle a locked pending request; ``reason`` set means the run stops with it."""
    now = timezone.now()
    request.status = status
    request.decided_at = now
    request.save(update_fields=["status", "decided_at"])
    approval_wake(request.tool_call_id)  # the agent waiting on it answers at once (after commit)
    if reason is None:
        ToolCall.objects.filter(pk=request.tool_call_id).update(decision=Decision.ALLOW)
        if (
            run.status == RunStatus.WAITING_APPROVAL
            and not ApprovalRequest.objects.filter(run=run, status=ApprovalStatus.PENDING).exists()
        ):
            waits = run_wait_end(run, now)
            run.status = RunStatus.RUNNING
            run.last_activity_at = now
            run.save(update_fields=["status", "last_activity_at", *waits])
    else:
        ToolCall.objects.filter(pk=request.tool_call_id).update(
            decision=Decision.STOP, stop_reason=reason
        )
    run_event_record(
        run,
        EventKind.APPROVAL_DECIDED,
        {
            "approval_id": request.pk,
            "tool": request.tool,
            "status": status,
            "decisions": [
                {
                    "reviewer": d.reviewer.get_username(),
                    "verdict": d.verdict,
                    "comment": d.comment,
                    "at": d.created_at.isoformat(),
                }
                for d in request.decisions.select_related("reviewer")
            ],
        },
    )
    if reason is not None and run.is_active:
        run_stop_locked(run, reason, f"approval {request.pk} {status}")
        approvals_cancel_for_run(run=run, reason=reason)
    else:
        run_broadcast(run)
    broadcast(
        [group_for("approvals")], "approvals.removed", {"ids": [request.pk], "status": status}
    )


def _expire(run: Run, request: ApprovalRequest) -> None:
    """The one expiry: the request is settled and its run stops with approval_timeout."""
    _close(
        run,
        request,
        ApprovalStatus.EXPIRED,
        reason=stop_reasons.for_tool(stop_reasons.APPROVAL_TIMEOUT, request.tool),
    )


def approval_decide(
    *, request_id: int, reviewer, verdict: str, comment: str = ""
) -> ApprovalRequest:
    """One reviewer's verdict. Rejection is final; approval needs the required distinct reviewers."""
    if verdict not in Verdict.values:
        raise Invalid("verdict must be 'approve' or 'reject'.", code="invalid_verdict")
    comment = (comment or "").strip()
    if verdict == Verdict.REJECT and not comment:
        raise Invalid("A comment is required to reject.", code="comment_required")
    expired = False
    switched_off: str | None = None
    with transaction.atomic():
        run, request = _lock(request_id)
        if request.status != ApprovalStatus.PENDING:
            raise Conflict(
                f"This request is already {request.status}.",
                code="already_decided",
                extra={"status": request.status},
            )
        if timezone.now() >= request.expires_at:
            _expire(run, request)
            expired = True
        else:
            if request.decisions.filter(reviewer=reviewer).exists():
                raise Conflict(
                    "You already decided this request; it needs another reviewer.",
                    code="same_reviewer",
                )
            ApprovalDecision.objects.create(
                request=request, reviewer=reviewer, verdict=verdict, comment=comment
            )
            approvals = request.decisions.filter(verdict=Verdict.APPROVE).count()
            if verdict == Verdict.REJECT:
                _close(
                    run,
                    request,
                    ApprovalStatus.REJECTED,
                    reason=stop_reasons.for_tool(stop_reasons.APPROVAL_REJECTED, request.tool),
                )
            elif approvals >= request.reviewers_required:
                switched_off = _kill_switch_turns_off(request.tool)
                if switched_off:
                    # The switch went on while the write waited: approving cannot let it run.
                    _close(run, request, ApprovalStatus.CANCELLED, reason=stop_reasons.KILL_SWITCH)
                else:
                    _close(run, request, ApprovalStatus.APPROVED, reason=None)
            else:
                broadcast([group_for("approvals")], "approvals.changed", {"id": request.pk})
            audit_record(
                actor=actor_name(reviewer),
                action=f"approval.{verdict}",
                target_type="approval",
                target_id=request.pk,
                reason=comment,
                before={"status": "pending"},
                after={
                    "status": request.status,
                    "tool": request.tool,
                    "run": run.pk,
                    "approvals": approvals,
                    "required": request.reviewers_required,
                },
            )
    if expired:
        raise Conflict(
            "This request expired before it was decided.",
            code="expired",
            extra={"status": "expired"},
        )
    if switched_off:
        raise Conflict(
            f"The kill switch ({switched_off}) turns {request.tool} off: the write was not "
            "allowed, and its run stopped with kill_switch.",
            code="kill_switch",
            extra={"status": ApprovalStatus.CANCELLED},
        )
    return request


def _kill_switch_turns_off(tool: str) -> str | None:
    """The kill switch's mode when it refuses every call of ``tool`` now, else None."""
    mode = kill_switch_current().mode
    return mode if kill_switch_turns_off(mode, policy_current().tool_rule(tool)) else None


def approval_expire(*, request_id: int) -> bool:
    """Expire one pending request past its expires_at; the run stops with approval_timeout."""
    with transaction.atomic():
        run, request = _lock(request_id)
        if request.status != ApprovalStatus.PENDING or timezone.now() < request.expires_at:
            return False
        _expire(run, request)
        return True


def approval_expire_if_due(request: ApprovalRequest) -> bool:
    """The agent's poll: expire its pending request once its time is up (no lock before then)."""
    return (
        request.is_pending
        and timezone.now() >= request.expires_at
        and approval_expire(request_id=request.pk)
    )


def approvals_expire_due() -> int:
    due = ApprovalRequest.objects.filter(
        status=ApprovalStatus.PENDING, expires_at__lte=timezone.now()
    )
    return sum(
        1
        for request_id in due.values_list("pk", flat=True)
        if approval_expire(request_id=request_id)
    )


def approval_open(
    *, run: Run, tool_call: ToolCall, rule: ToolRule, now: datetime
) -> ApprovalRequest:
    """The gateway asks for a write: the request, the run waiting for it, its trace and notices.

    Called inside the gateway's transaction with the run locked. The run starts waiting (its
    time from ``now`` does not count against max_seconds; the request's expiry bounds the wait);
    the caller saves the fields returned by ``run_wait_begin`` (``status``, ``waiting_since``).
    """
    request = ApprovalRequest.objects.create(
        tool_call=tool_call,
        run=run,
        agent=run.agent,
        tool=tool_call.tool,
        args=tool_call.args,
        args_hash=tool_call.args_hash,
        reviewers_required=rule.reviewers,
        created_at=now,
        expires_at=now + timedelta(seconds=rule.timeout_seconds),
    )
    run_wait_begin(run, now)
    run_event_record(
        run,
        EventKind.APPROVAL_REQUESTED,
        {
            "approval_id": request.pk,
            "tool": tool_call.tool,
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
            "agent": run.agent.name,
            "tool": tool_call.tool,
            "args": tool_call.args,
            "reviewers_required": rule.reviewers,
            "expires_at": request.expires_at.isoformat(),
        },
    )
    return request


def approvals_cancel_for_run(*, run: Run, reason: str) -> None:
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
        approval_wake(request.tool_call_id)
    broadcast(
        [group_for("approvals")],
        "approvals.removed",
        {"ids": [r.pk for r in pending], "status": ApprovalStatus.CANCELLED},
    )


def approvals_notify_expiring() -> int:
    """One notice per pending request that expires within the warning window."""

    if not WebhookEndpoint.objects.filter(enabled=True).exists():
        return 0
    soon = timezone.now() + timedelta(seconds=settings.OPSCONSOLE_APPROVAL_EXPIRING_SECONDS)
    count = 0
    expiring = ApprovalRequest.objects.filter(
        status=ApprovalStatus.PENDING, expires_at__lte=soon
    ).select_related("agent")
    for request in expiring:
        with transaction.atomic():
            count += len(
                notify(
                    event="approval.expiring",
                    key=f"approval:{request.pk}:expiring",
                    payload={
                        "id": request.pk,
                        "run": request.run_id,
                        "agent": request.agent.name,
                        "tool": request.tool,
                        "expires_at": request.expires_at.isoformat(),
                    },
                )
            )
    return count
