"""Reads for the gateway, pages and APIs."""

from __future__ import annotations

from django.db.models import QuerySet, Subquery

from agents.models import Agent, PolicyVersion, Run, ToolCall
from agents.policy import Policy
from opsconsole.errors import NotFound
from opsconsole.models import KillSwitch, KillSwitchMode

# Parsed policies by (number, created_at): a number alone could be reused after a restore of
# the database, the pair cannot.
_policy_cache: dict[tuple, Policy] = {}


def policy_current() -> Policy:
    """The policy in force now. A change made by any worker is seen on the next call."""
    latest = PolicyVersion.objects.order_by("-number").values_list("number", "created_at").first()
    if latest is None:
        raise NotFound("No policy has been loaded; run 'manage.py migrate'.", code="no_policy")
    policy = _policy_cache.get(latest)
    if policy is None:
        document = PolicyVersion.objects.values_list("document", flat=True).get(number=latest[0])
        policy = Policy(latest[0], document)
        if len(_policy_cache) > 64:
            _policy_cache.clear()
        _policy_cache[latest] = policy
    return policy


def kill_switch_current() -> KillSwitch:
    return KillSwitch.objects.filter(pk=1).first() or KillSwitch(pk=1, mode=KillSwitchMode.OFF)


def run_get_for_agent(*, agent: Agent, run_id: int) -> Run:
    """An agent sees only its own runs: another agent's run is a 404."""
    run = Run.objects.select_related("agent").filter(pk=run_id, agent=agent).first()
    if run is None:
        raise NotFound(f"No run {run_id} for this agent.")
    return run


def tool_call_get_for_agent(*, agent: Agent, tool_call_id: int) -> ToolCall:
    tool_call = (
        ToolCall.objects.select_related("run", "run__agent", "approval")
        .filter(pk=tool_call_id, run__agent=agent)
        .first()
    )
    if tool_call is None:
        raise NotFound(f"No tool call {tool_call_id} for this agent.")
    return tool_call


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
# Reads for the console's pages. Lists use keyset pagination (never OFFSET) on the same columns
# as their index, so the thousandth page costs what the first one does.

from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402

from django.db.models import Count, Min, Prefetch, Q  # noqa: E402
from django.utils import timezone  # noqa: E402

from agents import stop_reasons  # noqa: E402
from agents.models import ACTIVE_STATUSES, AgentKey, ToolBreaker, TraceEvent  # noqa: E402


@dataclass(frozen=True)
class KeysetCursor:
    """A position in a list ordered by (a timestamp, id): the values of the last row shown."""

    moment: datetime
    id: int

    # Integer microseconds since the epoch: exact, unlike a float timestamp.
    EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

    def encode(self) -> str:
        micros = (self.moment - self.EPOCH) // timedelta(microseconds=1)
        return f"{micros}-{self.id}"

    def older_q(self, field: str) -> Q:
        """Rows after this one in ``(-field, -id)`` order.

        ``field <= moment`` is implied by the rest but is what lets the index start at the
        cursor: with the bare OR the database walks the index from the newest row and filters
        everything before the cursor (a page 95% of the way back read 950,000 rows).
        """
        return Q(**{f"{field}__lte": self.moment}) & (
            Q(**{f"{field}__lt": self.moment}) | Q(**{field: self.moment, "id__lt": self.id})
        )

    @classmethod
    def decode(cls, raw: str) -> KeysetCursor | None:
        micros, _, ident = (raw or "").partition("-")
        try:
            moment = cls.EPOCH + timedelta(microseconds=int(micros))
            return cls(moment=moment, id=int(ident))
        except (ValueError, OverflowError, OSError):
            return None


RunCursor = KeysetCursor


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
    after: RunCursor | None = None,
    limit: int = 50,
) -> tuple[list[Run], RunCursor | None]:
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
    rows = list(runs.defer("metadata", "answer", "error", "request_hash")[: limit + 1])
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, RunCursor(rows[-1].started_at, rows[-1].pk)


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
    from approvals.models import ApprovalRequest, ApprovalStatus

    now = timezone.now()
    day_ago, hour_ago = now - timedelta(days=1), now - timedelta(hours=1)
    active = Run.objects.filter(status__in=ACTIVE_STATUSES)
    pending = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)
    pending_stats = pending.aggregate(n=Count("id"), oldest=Min("created_at"))
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
        pending_count=pending_stats["n"],
        oldest_pending_at=pending_stats["oldest"],
        stops_last_hour=_by_kind([(reason, hour) for reason, _, hour in by_reason]),
        stops_last_day=_by_kind([(reason, day) for reason, day, _ in by_reason]),
        top_stopping_agents=[(name, n) for name, n in top_agents],
    )


def agent_admin_list() -> list[Agent]:
    """Agents with their keys (newest first) for the agents admin page."""
    return list(
        Agent.objects.order_by("name").prefetch_related(
            Prefetch("keys", queryset=AgentKey.objects.order_by("-created_at", "-id"))
        )
    )


def agent_get(*, name: str) -> Agent:
    agent = Agent.objects.filter(name=name).first()
    if agent is None:
        raise NotFound(f"No agent {name!r}.")
    return agent


def policy_version_list(*, before: int | None = None, limit: int = 50) -> list[PolicyVersion]:
    versions = PolicyVersion.objects.defer("document").order_by("-number")
    if before is not None:
        versions = versions.filter(number__lt=before)
    return list(versions[:limit])


def policy_version_with_previous(*, number: int) -> tuple[PolicyVersion, PolicyVersion | None]:
    rows = list(PolicyVersion.objects.filter(number__lte=number).order_by("-number")[:2])
    if not rows or rows[0].number != number:
        raise NotFound(f"No policy version {number}.")
    return rows[0], rows[1] if len(rows) > 1 else None


@dataclass(frozen=True)
class KillSwitchImpact:
    """What turning the kill switch to a mode would do, for the confirmation step."""

    mode: str
    active_runs: int
    waiting_runs: int
    dark_tools: list[str]
    runs_stop_now: bool


def kill_switch_impact(*, mode: str) -> KillSwitchImpact:
    """Computed from the policy in force and the runs active right now."""
    policy = policy_current()
    allowed = policy.document["tools"]["allow"]
    if mode == "stop_all":
        dark = list(allowed)
    elif mode == "disable_writes":
        dark = [tool for tool in allowed if policy.tool_rule(tool).effect == "write"]
    elif mode == "disable_expensive":
        dark = [tool for tool in allowed if policy.tool_rule(tool).expensive]
    else:
        dark = []
    counts = Run.objects.filter(status__in=ACTIVE_STATUSES).aggregate(
        active=Count("id"), waiting=Count("id", filter=Q(status="waiting_approval"))
    )
    return KillSwitchImpact(
        mode=mode,
        active_runs=counts["active"],
        waiting_runs=counts["waiting"],
        dark_tools=dark,
        runs_stop_now=mode == "stop_all",
    )


def tool_breakers() -> dict[str, ToolBreaker]:
    """Each tool's circuit breaker by tool name (tools that never reported a result have none)."""
    return {breaker.tool: breaker for breaker in ToolBreaker.objects.all()}
