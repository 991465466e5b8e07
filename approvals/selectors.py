from __future__ import annotations

from collections.abc import Iterator
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
        _set_context_events(request)
    return rows


def approval_card(*, request_id: int) -> ApprovalRequest | None:
    request = _queue_queryset().filter(pk=request_id).first()
    if request is not None:
        _set_context_events(request)
    return request


def _set_context_events(request: ApprovalRequest) -> None:
    """The run's latest trace events, oldest first, other than the request's own tool call."""
    # Set on the run by the sliced prefetch in _queue_queryset; the stubs cannot follow a
    # Prefetch's to_attr through a relation.
    recent_events: list[TraceEvent] = request.run.recent_events  # type: ignore[attr-defined]
    request.context_events = [
        event for event in reversed(recent_events) if event.tool_call_id != request.tool_call_id
    ][-CONTEXT_EVENTS:]


def approval_pending_count() -> int:
    """The queue's size, as the approvals badge, the overview and /metrics show it."""
    return _pending().count()


def approval_pending_summary() -> tuple[int, datetime | None]:
    """The queue's size and when its oldest request was made, in one read."""
    stats = _pending().aggregate(n=Count("id"), oldest=Min("created_at"))
    return stats["n"], stats["oldest"]


def approval_waits(
    *, runs_ended_from: datetime, runs_ended_before: datetime
) -> Iterator[tuple[int, float]]:
    """(run id, seconds from request to decision) of the decided requests of runs that ended in
    the period (a cancelled request was never decided by a person, so it is left out)."""
    waits = ApprovalRequest.objects.filter(
        run__ended_at__gte=runs_ended_from,
        run__ended_at__lt=runs_ended_before,
        decided_at__isnull=False,
    ).exclude(status=ApprovalStatus.CANCELLED)
    for run_id, created, decided in waits.values_list("run_id", "created_at", "decided_at"):
        assert decided is not None  # the filter above leaves out undecided requests
        yield run_id, (decided - created).total_seconds()


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
