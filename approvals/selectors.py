from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus


def approval_list(*, status: str = ApprovalStatus.PENDING) -> QuerySet[ApprovalRequest]:
    """Pending requests oldest first; decided ones most recent first."""
    requests = ApprovalRequest.objects.select_related("agent").prefetch_related(
        Prefetch("decisions", queryset=ApprovalDecision.objects.select_related("reviewer"))
    )
    if status:
        requests = requests.filter(status=status)
    if status == ApprovalStatus.PENDING:
        return requests.order_by("created_at", "id")
    return requests.order_by("-id")
