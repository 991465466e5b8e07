"""Reads for the gateway, pages and APIs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q, QuerySet, Subquery
from django.utils import timezone

from agents import stop_reasons
from agents.models import ACTIVE_STATUSES, Agent, Run, TraceEvent
from approvals.selectors import approval_pending_summary
from opsconsole.errors import NotFound
from opsconsole.pagination import KeysetCursor, keyset_page


def run_list(*, agent: str | None = None, status: str | None = None) -> QuerySet[Run]:
    runs = Run.objects.select_related("agent").order_by("-started_at", "-id")
    if agent:
        # The agent's id as a scalar subquery, not a join on its name: PostgreSQL then scans
        # run_agent_list_idx for that one id in list order and stops after a page, instead of
        # collecting every matching run of the agent and sorting them (50 ms at a million runs).
        agent_id = Agent.objects.filter(name=agent).values("id")[:1]
        runs = runs.filter(agent_id=Subquery(agent_id))
    if status:
        runs = runs.filter(status=status)
    return runs


# --- the web console --------------------------------------------------------------------------
# Lists use keyset pagination (opsconsole/pagination.py).


def stop_reason_filter(value: str) -> Q:
    """``tool_denied`` matches every ``tool_denied:<tool>``; a full reason matches itself."""
    if ":" in value:
        return Q(stop_reason=value)
    return Q(stop_reason=value) | Q(stop_reason__startswith=f"{value}:")


def run_page(
    *,
    agent: str | None = None,
    status: str | None = None,
    stop_reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    search: str | None = None,
    after: KeysetCursor | None = None,
    limit: int = 50,
) -> tuple[list[Run], KeysetCursor | None]:
    """One page of runs, newest first, and the cursor of the next page (None on the last)."""
    runs = run_list(agent=agent, status=status)
    if stop_reason:
        runs = runs.filter(stop_reason_filter(stop_reason))
    if since:
        runs = runs.filter(started_at__gte=since)
    if until:
        runs = runs.filter(started_at__lt=until)
    if search:
        runs = runs.filter(task__icontains=search)
    if after:
        runs = runs.filter(after.older_q("started_at"))
    return keyset_page(
        runs.defer("metadata", "answer", "error", "request_hash"),
        limit=limit,
        cursor_of=lambda run: KeysetCursor(run.started_at, run.pk),
    )


def run_get(*, run_id: int) -> Run:
    run = Run.objects.select_related("agent").filter(pk=run_id).first()
    if run is None:
        raise NotFound(f"No run {run_id}.")
    return run


def run_trace_page(
    *,
    run: Run,
    after: int | None = None,
    before: int | None = None,
    limit: int = 100,
) -> tuple[list[TraceEvent], bool]:
    """A page of a run's timeline in id order, and whether more events lie beyond it.

    ``after`` pages forward from an event id; ``before`` pages backward (for "latest first"
    views of long traces); neither gives the beginning of the trace.
    """
    events = TraceEvent.objects.filter(run=run)
    if before is not None:
        rows = list(events.filter(id__lt=before).order_by("-id")[: limit + 1])
        more = len(rows) > limit
        return list(reversed(rows[:limit])), more
    if after is not None:
        events = events.filter(id__gt=after)
    rows = list(events.order_by("id")[: limit + 1])
    return rows[:limit], len(rows) > limit


def run_agent_names() -> list[str]:
    return list(Agent.objects.order_by("name").values_list("name", flat=True))


@dataclass(frozen=True)
class Overview:
    running: list[Run]
    running_count: int
    pending_count: int
    oldest_pending_at: datetime | None
    stops_last_hour: list[tuple[str, int]]
    stops_last_day: list[tuple[str, int]]
    top_stopping_agents: list[tuple[str, int]]


def _by_kind(rows: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Counts by stop reason kind (``tool_denied:x`` -> ``tool_denied``), largest first."""
    counts: dict[str, int] = {}
    for reason, n in rows:
        if n:
            kind = stop_reasons.kind_of(reason)
            counts[kind] = counts.get(kind, 0) + n
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def overview(*, running_limit: int = 10) -> Overview:
    now = timezone.now()
    day_ago, hour_ago = now - timedelta(days=1), now - timedelta(hours=1)
    active = Run.objects.filter(status__in=ACTIVE_STATUSES)
    pending_count, oldest_pending_at = approval_pending_summary()
    # One read of the last day's ended runs for both periods (run_ended_idx on PostgreSQL).
    by_reason = list(
        Run.objects.filter(ended_at__gte=day_ago)
        .values_list("stop_reason")
        .annotate(day=Count("id"), hour=Count("id", filter=Q(ended_at__gte=hour_ago)))
        .order_by()
    )
    top_agents = (
        Run.objects.filter(ended_at__gte=day_ago, status="stopped")
        .values_list("agent__name")
        .annotate(n=Count("id"))
        .order_by("-n", "agent__name")[:5]
    )
    return Overview(
        running=list(active.select_related("agent").order_by("-started_at", "-id")[:running_limit]),
        running_count=active.count(),
        pending_count=pending_count,
        oldest_pending_at=oldest_pending_at,
        stops_last_hour=_by_kind([(reason, hour) for reason, _, hour in by_reason]),
        stops_last_day=_by_kind([(reason, day) for reason, day, _ in by_reason]),
        top_stopping_agents=[(name, n) for name, n in top_agents],
    )
