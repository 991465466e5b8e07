"""Reads for the gateway, pages and APIs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

from agents import stop_reasons
from agents.models import (
    ACTIVE_STATUSES,
    Agent,
    Decision,
    EventKind,
    PolicyVersion,
    Run,
    ToolBreaker,
    ToolCall,
    TraceEvent,
)
from agents.policy.document import Policy
from agents.policy.selectors import policy_current
from agents.registry.selectors import agent_spend
from approvals.selectors import approval_pending_summary
from opsconsole.errors import NotFound
from opsconsole.pagination import AmountCursor, KeysetCursor, keyset_page


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
    tool: str | None = None,
    sort: str = "newest",
    after: KeysetCursor | AmountCursor | None = None,
    limit: int = 50,
    source: str | None = None,
) -> tuple[list[Run], KeysetCursor | AmountCursor | None]:
    """One page of runs and the cursor of the next page (None on the last).

    ``sort`` is ``"newest"`` (by start, the default) or ``"cost"`` (most expensive first, by
    ``(usd, id)``; run_cost_list_idx on PostgreSQL); ``after`` is a cursor of the same order (a
    ``KeysetCursor`` or an ``AmountCursor``), any other is the first page. ``tool`` keeps the runs
    that asked for that tool at least once, whatever the decision (toolcall_loop_idx answers the
    EXISTS for each run from its ``(run, tool)`` prefix).
    """
    runs = run_list(agent=agent, status=status)
    if stop_reason:
        runs = runs.filter(stop_reason_filter(stop_reason))
    if since:
        runs = runs.filter(started_at__gte=since)
    if until:
        runs = runs.filter(started_at__lt=until)
    if search:
        runs = runs.filter(task__icontains=search)
    if tool:
        runs = runs.filter(Exists(ToolCall.objects.filter(run=OuterRef("pk"), tool=tool)))
    if source:
        # Observed runs only: run_observed_list_idx holds just those, in list order.
        runs = runs.filter(source=source)
    runs = runs.defer("metadata", "answer", "error", "request_hash")
    if sort == "cost":
        runs = runs.order_by("-usd", "-id")
        if isinstance(after, AmountCursor):
            runs = runs.filter(after.smaller_q("usd"))
        return keyset_page(runs, limit=limit, cursor_of=lambda run: AmountCursor(run.usd, run.pk))
    if isinstance(after, KeysetCursor):
        runs = runs.filter(after.older_q("started_at"))
    return keyset_page(
        runs, limit=limit, cursor_of=lambda run: KeysetCursor(run.started_at, run.pk)
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


# --- who is generating load, on the overview -----------------------------------------------------

LOAD_TREND_MINUTES = 30


@dataclass(frozen=True)
class LoadRow:
    """An agent's or a tool's load now: calls and stops (``decision == "stop"``: denials, caps,
    breakers) in the last minute and the last hour, what its tool calls cost in the last hour
    (the policy's price plus what results reported), and calls per minute over the last
    ``LOAD_TREND_MINUTES`` minutes, oldest first. ``usd_last_day`` is an agent's spend of the
    runs it started in the last day (model steps included); None for a tool."""

    name: str
    calls_per_minute: int
    stops_per_minute: int
    calls_last_hour: int
    stops_last_hour: int
    usd_last_hour: Decimal
    usd_last_day: Decimal | None
    trend: list[int]


@dataclass(frozen=True)
class LoadRanking:
    agents: list[LoadRow]
    tools: list[LoadRow]


@dataclass
class _LoadTally:
    calls_per_minute: int = 0
    stops_per_minute: int = 0
    calls_last_hour: int = 0
    stops_last_hour: int = 0
    usd_last_hour: Decimal = Decimal("0")
    trend: list[int] | None = None

    def add(
        self,
        *,
        calls: int,
        stops: int,
        recent: int,
        recent_stops: int,
        usd: Decimal,
        minute_index: int,
    ) -> None:
        self.calls_per_minute += recent
        self.stops_per_minute += recent_stops
        self.calls_last_hour += calls
        self.stops_last_hour += stops
        self.usd_last_hour += usd
        if self.trend is None:
            self.trend = [0] * LOAD_TREND_MINUTES
        if 0 <= minute_index < LOAD_TREND_MINUTES:
            self.trend[minute_index] += calls


def _ranked(
    tallies: dict[str, _LoadTally], usd_last_day: dict[str, Decimal] | None, limit: int
) -> list[LoadRow]:
    rows = [
        LoadRow(
            name=name,
            calls_per_minute=tally.calls_per_minute,
            stops_per_minute=tally.stops_per_minute,
            calls_last_hour=tally.calls_last_hour,
            stops_last_hour=tally.stops_last_hour,
            usd_last_hour=tally.usd_last_hour,
            usd_last_day=None if usd_last_day is None else usd_last_day.get(name, Decimal("0")),
            trend=tally.trend or [0] * LOAD_TREND_MINUTES,
        )
        for name, tally in tallies.items()
    ]
    rows.sort(
        key=lambda row: (-row.usd_last_hour, -row.calls_per_minute, -row.calls_last_hour, row.name)
    )
    return rows[:limit]


def load_ranking(*, now: datetime, limit: int = 10) -> LoadRanking:
    """Agents and tools with a tool call in the last hour, costliest first: by USD in the last
    hour, then calls in the last minute. Two queries whatever the load: the last hour's calls
    grouped by agent, tool and minute (toolcall_created_idx finds them), and the ranked agents'
    spend over the last day (``agent_spend``)."""
    hour_ago, minute_ago = now - timedelta(hours=1), now - timedelta(minutes=1)
    this_minute = now.replace(second=0, microsecond=0)
    stopped = Q(decision=Decision.STOP)
    rows = (
        ToolCall.objects.filter(created_at__gt=hour_ago, created_at__lte=now)
        .annotate(minute=TruncMinute("created_at"))
        .values_list("run__agent_id", "run__agent__name", "tool", "minute")
        .annotate(
            calls=Count("id"),
            stops=Count("id", filter=stopped),
            recent=Count("id", filter=Q(created_at__gt=minute_ago)),
            recent_stops=Count("id", filter=stopped & Q(created_at__gt=minute_ago)),
            priced=Sum("cost_usd"),
            reported=Sum("result_usd"),
        )
        .order_by()
    )
    by_agent: dict[str, _LoadTally] = {}
    by_tool: dict[str, _LoadTally] = {}
    agent_ids: dict[int, str] = {}
    for (
        agent_id,
        agent_name,
        tool,
        minute,
        calls,
        stops,
        recent,
        recent_stops,
        priced,
        reported,
    ) in rows:
        agent_ids[agent_id] = agent_name
        minutes_ago = int((this_minute - minute).total_seconds() // 60)
        figures = {
            "calls": calls,
            "stops": stops,
            "recent": recent,
            "recent_stops": recent_stops,
            "usd": (priced or Decimal("0")) + (reported or Decimal("0")),
            "minute_index": LOAD_TREND_MINUTES - 1 - minutes_ago,
        }
        by_agent.setdefault(agent_name, _LoadTally()).add(**figures)
        by_tool.setdefault(tool, _LoadTally()).add(**figures)
    if not agent_ids:
        return LoadRanking(agents=[], tools=[])
    spend = agent_spend(agent_ids=list(agent_ids))
    usd_last_day = {
        name: spend[agent_id].last_day for agent_id, name in agent_ids.items() if agent_id in spend
    }
    return LoadRanking(
        agents=_ranked(by_agent, usd_last_day, limit),
        tools=_ranked(by_tool, None, limit),
    )


# --- a run's summary, above its trace -----------------------------------------------------------


@dataclass(frozen=True)
class ToolSummary:
    """One tool's calls in a run: allowed, stopped, waiting for approval; counted against the
    budgets; and what they cost (the policy's price per call plus what results reported)."""

    tool: str
    allowed: int
    stopped: int
    pending: int
    counted: int
    usd: Decimal


@dataclass(frozen=True)
class RunSummary:
    tools: list[ToolSummary]
    usd: Decimal
    tools_usd: Decimal
    seconds: float
    waiting_seconds: float
    stop: stop_reasons.StopExplanation | None

    @property
    def steps_usd(self) -> Decimal:
        """What the model steps cost: the run's spend less its tools' (never below zero)."""
        return max(self.usd - self.tools_usd, Decimal("0"))


def run_summary(run: Run) -> RunSummary:
    """Calls per tool and their cost in one aggregate query; the stop explained with the few
    reads it needs (its trace event, the stopped call, a policy version, the tool's breaker)."""
    rows = (
        ToolCall.objects.filter(run=run)
        .values("tool")
        .annotate(
            allowed=Count("id", filter=Q(decision=Decision.ALLOW)),
            stopped=Count("id", filter=Q(decision=Decision.STOP)),
            pending=Count("id", filter=Q(decision=Decision.PENDING_APPROVAL)),
            counted=Count("id", filter=Q(counted=True)),
            priced=Sum("cost_usd"),
            reported=Sum("result_usd"),
        )
        .order_by("tool")
    )
    tools = [
        ToolSummary(
            tool=row["tool"],
            allowed=row["allowed"],
            stopped=row["stopped"],
            pending=row["pending"],
            counted=row["counted"],
            usd=(row["priced"] or Decimal("0")) + (row["reported"] or Decimal("0")),
        )
        for row in rows
    ]
    return RunSummary(
        tools=tools,
        usd=run.usd,
        tools_usd=sum((tool.usd for tool in tools), Decimal("0")),
        seconds=run.seconds,
        waiting_seconds=run.waiting_seconds,
        stop=_stop_explained(run, {tool.tool: tool.counted for tool in tools}),
    )


def _stop_explained(run: Run, counted: dict[str, int]) -> stop_reasons.StopExplanation | None:
    if not run.stop_reason:
        return None
    kind = stop_reasons.kind_of(run.stop_reason)
    stop_event = (
        TraceEvent.objects.filter(run=run, kind=EventKind.STOP).order_by("-id").only("data").first()
    )
    facts: dict[str, Any] = {
        "agent": run.agent.name,
        "budgets": run.budgets(),
        "usage": run.usage(),
        "detail": str(stop_event.data.get("detail") or "") if stop_event else "",
        "now": timezone.now(),
    }
    if kind in (
        stop_reasons.MAX_TOOL_CALLS,
        stop_reasons.APPROVAL_REJECTED,
        stop_reasons.APPROVAL_TIMEOUT,
    ):
        stopped_call = (
            ToolCall.objects.filter(run=run, decision=Decision.STOP, stop_reason=run.stop_reason)
            .select_related("approval")
            .only("tool", "approval__id")
            .order_by("-id")
            .first()
        )
        if stopped_call is not None:
            facts["tool"] = stopped_call.tool
            approval = getattr(stopped_call, "approval", None)
            facts["approval_id"] = approval.pk if approval is not None else None
    if kind in stop_reasons.BUDGET_USAGE:
        # The policy the run ran under: its per-tool caps and whose ceiling the budget was.
        document = (
            PolicyVersion.objects.filter(number=run.policy_version)
            .values_list("document", flat=True)
            .first()
        )
        if document is not None:
            policy = Policy(run.policy_version, document)
            if facts.get("tool"):
                facts["tool_cap"] = policy.tool_rule(facts["tool"]).max_calls_per_run
                facts["calls_of_tool"] = counted.get(facts["tool"], 0)
            own = (policy.document["agents"].get(run.agent.name) or {}).get("budgets") or {}
            facts["budget_is_agents"] = own.get(kind) is not None
            facts["ceiling_known"] = True
            facts["ceiling"] = policy.ceilings(run.agent.name).get(kind)
    if kind == stop_reasons.TOOL_DEGRADED:
        # When the breaker lets a call through is a question about now: the policy in force.
        tool = run.stop_reason.partition(":")[2]
        breaker = ToolBreaker.objects.filter(tool=tool).first()
        facts["cooldown_seconds"] = policy_current().tool_rule(tool).breaker["cooldown_seconds"]
        if breaker is not None:
            facts["breaker_state"] = breaker.state
            facts["breaker_opened_at"] = breaker.opened_at
            facts["breaker_trial_calls_left"] = breaker.trial_calls_left
    return stop_reasons.explain_run(run.stop_reason, stop_reasons.StopFacts(**facts))
