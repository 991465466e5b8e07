"""Approval requests for writes, and the reviewers' decisions on them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from agents.models import TraceEvent


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


class ApprovalRequest(models.Model):
    """A write waiting for reviewers, bound to the exact tool call and arguments it was asked for."""

    tool_call = models.OneToOneField(
        "agents.ToolCall", on_delete=models.CASCADE, related_name="approval"
    )
    run = models.ForeignKey("agents.Run", on_delete=models.CASCADE, related_name="approvals")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="approvals")
    tool = models.CharField(max_length=200)
    args = models.JSONField(default=dict)
    args_hash = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    reviewers_required = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    # When an approved call was executed by the MCP endpoint (agents/mcp): an approval is used
    # at most once, claimed by a conditional update of this column.
    consumed_at = models.DateTimeField(null=True, blank=True)

    # Not stored: set for the queue's cards by approvals.selectors (the run's latest trace
    # events) and approvals.views (whether the reviewer looking already approved it).
    context_events: list[TraceEvent]
    decided_by_me: bool

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["created_at", "id"],
                condition=models.Q(status="pending"),
                name="approval_pending_idx",
            ),
            models.Index(
                fields=["expires_at"],
                condition=models.Q(status="pending"),
                name="approval_expiry_idx",
            ),
            models.Index(fields=["-decided_at"], name="approval_history_idx"),
        ]

    def __str__(self) -> str:
        return f"approval {self.id} {self.tool} ({self.status})"

    @property
    def is_pending(self) -> bool:
        return self.status == ApprovalStatus.PENDING


class Verdict(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"


class ApprovalDecision(models.Model):
    """One reviewer's verdict; a reviewer decides a request at most once."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["request", "reviewer"], name="one_decision_per_reviewer"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reviewer} {self.verdict}"
