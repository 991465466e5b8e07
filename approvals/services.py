"""Deciding, expiring and cancelling approval requests.

Locks are taken run first, then request (the gateway's order), so a reviewer and an agent never
deadlock; the transition is claimed with the request row locked, so two reviewers deciding at
once get one winner and one 409.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from agents import stop_reasons
from agents.models import Decision, EventKind, Run, RunStatus, ToolCall
from agents.services import _broadcast_run, _run_event, _stop_run
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus, Verdict
from opsconsole.audit import actor_name, audit_record
from opsconsole.errors import Conflict, Invalid, NotFound
from opsconsole.live import broadcast, group_for


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
    if reason is None:
        ToolCall.objects.filter(pk=request.tool_call_id).update(decision=Decision.ALLOW)
        if (
            run.status == RunStatus.WAITING_APPROVAL
            and not ApprovalRequest.objects.filter(run=run, status=ApprovalStatus.PENDING).exists()
        ):
            run.status = RunStatus.RUNNING
            run.last_activity_at = now
            run.save(update_fields=["status", "last_activity_at"])
    else:
        ToolCall.objects.filter(pk=request.tool_call_id).update(
            decision=Decision.STOP, stop_reason=reason
        )
    _run_event(
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
        _stop_run(run, reason, f"approval {request.pk} {status}")
    else:
        _broadcast_run(run)
    broadcast(
        [group_for("approvals")], "approvals.removed", {"ids": [request.pk], "status": status}
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
    with transaction.atomic():
        run, request = _lock(request_id)
        if request.status != ApprovalStatus.PENDING:
            raise Conflict(
                f"This request is already {request.status}.",
                code="already_decided",
                extra={"status": request.status},
            )
        if timezone.now() >= request.expires_at:
            _close(
                run,
                request,
                ApprovalStatus.EXPIRED,
                reason=stop_reasons.for_tool(stop_reasons.APPROVAL_TIMEOUT, request.tool),
            )
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
    return request


def approval_expire(*, request_id: int) -> bool:
    """Expire one pending request past its expires_at; the run stops with approval_timeout."""
    with transaction.atomic():
        run, request = _lock(request_id)
        if request.status != ApprovalStatus.PENDING or timezone.now() < request.expires_at:
            return False
        _close(
            run,
            request,
            ApprovalStatus.EXPIRED,
            reason=stop_reasons.for_tool(stop_reasons.APPROVAL_TIMEOUT, request.tool),
        )
        return True


def approvals_expire_due() -> int:
    due = ApprovalRequest.objects.filter(
        status=ApprovalStatus.PENDING, expires_at__lte=timezone.now()
    )
    return sum(
        1
        for request_id in due.values_list("pk", flat=True)
        if approval_expire(request_id=request_id)
    )
