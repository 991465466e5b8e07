from __future__ import annotations

from datetime import datetime

from django.db.models import Count, Min, Prefetch, QuerySet

from agents.models import TraceEvent
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus
from opsconsole.pagination import KeysetCursor, keyset_page


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


# --- the web console --------------------------------------------------------------------------


# How many of the run's latest trace events a queue card shows for context.
CONTEXT_EVENTS = 6


def _queue_queryset() -> QuerySet[ApprovalRequest]:
    return ApprovalRequest.objects.select_related("agent", "run").prefetch_related(
        Prefetch(
            "decisions",
            queryset=ApprovalDecision.objects.select_related("reviewer").order_by(
                "created_at", "id"
            ),
        ),
        # A sliced prefetch: one query for the whole page, the latest events of each run.
        Prefetch(
            "run__events",
            queryset=TraceEvent.objects.order_by("-id")[: CONTEXT_EVENTS + 2],
            to_attr="recent_events",
        ),
    )


def approval_queue(*, newer_than: int | None = None, limit: int = 50) -> list[ApprovalRequest]:
    """Pending requests oldest first, with their decisions so far and the run's latest trace.

    ``newer_than`` gives only requests with a larger id (what a live queue lacks).
    """
    requests = _queue_queryset().filter(status=ApprovalStatus.PENDING)
    if newer_than is not None:
        requests = requests.filter(id__gt=newer_than)
    rows = list(requests.order_by("created_at", "id")[:limit])
    for request in rows:
        request.context_events = [
            event
            for event in reversed(request.run.recent_events)
            if event.tool_call_id != request.tool_call_id
        ][-CONTEXT_EVENTS:]
    return rows


def approval_card(*, request_id: int) -> ApprovalRequest | None:
    request = _queue_queryset().filter(pk=request_id).first()
    if request is not None:
        request.context_events = [
            event
            for event in reversed(request.run.recent_events)
            if event.tool_call_id != request.tool_call_id
        ][-CONTEXT_EVENTS:]
    return request


def approval_pending_count() -> int:
    """The queue's size, as the approvals badge, the overview and /metrics show it."""
    return _pending().count()


def approval_pending_summary() -> tuple[int, datetime | None]:
    """The queue's size and when its oldest request was made, in one read."""
    stats = _pending().aggregate(n=Count("id"), oldest=Min("created_at"))
    return stats["n"], stats["oldest"]


def _pending() -> QuerySet[ApprovalRequest]:
    return ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)


def approval_history(
    *, status: str | None = None, before: KeysetCursor | None = None, limit: int = 50
) -> tuple[list[ApprovalRequest], KeysetCursor | None]:
    """Decided requests, most recently decided first (keyset on decided_at, id)."""
    requests = (
        ApprovalRequest.objects.exclude(status=ApprovalStatus.PENDING)
        .filter(decided_at__isnull=False)
        .select_related("agent")
        .prefetch_related(
            Prefetch(
                "decisions",
                queryset=ApprovalDecision.objects.select_related("reviewer").order_by(
                    "created_at", "id"
                ),
            )
        )
        .order_by("-decided_at", "-id")
    )
    if status:
        requests = requests.filter(status=status)
    if before is not None:
        requests = requests.filter(before.older_q("decided_at"))
    return keyset_page(
        requests, limit=limit, cursor_of=lambda row: KeysetCursor(row.decided_at, row.pk)
    )
