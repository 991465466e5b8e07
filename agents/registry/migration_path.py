"""The seed's migration path for one agent, from an observed prototype to an enforced production
agent: each step's state computed from the data, with a link to the page that completes it.

The seed's path (monitoring first, then budgets that fail closed, default-deny tools and write
approvals, golden tasks and drift, and only then more autonomy) and its checklist, as steps:

1. observed traffic  2. budgets set  3. default-deny allowlist  4. argument and output validation
5. writes need approval  6. golden runs  7. drift rules  8. kill switch and pause rehearsed
9. enforce mode

A read (selector): it changes nothing. About a dozen queries, whatever the agent's history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone

from agents import stop_reasons
from agents.models import Agent, AgentMode, DriftRule, GoldenRun, KillSwitchMode, Run
from agents.policy.document import BUDGET_NAMES, Policy
from agents.policy.selectors import policy_current
from opsconsole.models import AuditEntry

# Traffic older than this does not show what the agent does now.
TRAFFIC_DAYS = 30
# A rehearsal older than this is not one: people and runbooks change.
REHEARSAL_DAYS = 90
# The budgets the seed's checklist names ("steps, seconds, tool calls, USD").
CHECKLIST_BUDGETS = ("max_steps", "max_seconds", "max_tool_calls", "max_usd")


@dataclass(frozen=True)
class Step:
    """One item of the path: done or not, why (from the data), and where to complete it."""

    key: str
    title: str
    done: bool
    summary: str
    link_label: str
    href: str
    facts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WouldStops:
    """What enforcing would have done to the agent's observed runs lately."""

    observed_runs: int
    would_stop: int
    by_reason: list[tuple[str, int]]  # stop reason kind, runs; most first
    would_wait: int  # runs with a call that would have waited for a reviewer


def would_stops(*, agent: Agent, since: datetime) -> WouldStops:
    """Counts over the agent's runs in observe mode started since ``since`` (two queries)."""
    observed = Run.objects.filter(agent=agent, started_at__gte=since, mode=AgentMode.OBSERVE)
    totals = observed.aggregate(
        runs=Count("id"),
        stopped=Count("id", filter=~Q(would_stop_reason="")),
        waits=Count("id", filter=Q(would_approvals__gt=0)),
    )
    kinds: dict[str, int] = {}
    for reason, count in (
        observed.exclude(would_stop_reason="")
        .values_list("would_stop_reason")
        .annotate(n=Count("id"))
        .order_by()
    ):
        kind = stop_reasons.kind_of(reason)
        kinds[kind] = kinds.get(kind, 0) + count
    return WouldStops(
        observed_runs=totals["runs"],
        would_stop=totals["stopped"],
        by_reason=sorted(kinds.items(), key=lambda item: (-item[1], item[0])),
        would_wait=totals["waits"],
    )


def _observed_traffic(agent: Agent, now: datetime) -> Step:
    since = now - timedelta(days=TRAFFIC_DAYS)
    runs = Run.objects.filter(agent=agent, started_at__gte=since)
    counts = runs.aggregate(runs=Count("id"), tool_calls=Count("tool_call_set"))
    done = counts["runs"] > 0
    return Step(
        key="observed_traffic",
        title="Observed traffic: tool calls, tokens and stop reasons recorded",
        done=done,
        summary=(
            f"{counts['runs']} run(s) and {counts['tool_calls']} tool call(s) in the last "
            f"{TRAFFIC_DAYS} days."
            if done
            else f"No run in the last {TRAFFIC_DAYS} days: point the agent at the gateway "
            "(observe mode is safe) or export its OpenTelemetry traces to the console."
        ),
        link_label="See its runs",
        href=f"{reverse('runs:list')}?agent={agent.name}",
    )


def _budgets(agent: Agent, policy: Policy) -> Step:
    ceilings = policy.ceilings(agent.name)
    missing = [name for name in CHECKLIST_BUDGETS if ceilings.get(name) is None]
    set_ = [f"{name} {ceilings[name]}" for name in BUDGET_NAMES if ceilings.get(name) is not None]
    return Step(
        key="budgets",
        title="Budgets set: steps, seconds, tool calls, USD",
        done=not missing,
        summary=(
            "Every run is bounded: " + ", ".join(set_) + "."
            if not missing
            else "No limit on " + ", ".join(missing) + ": a run can spend without bound there."
        ),
        link_label=f"Set {agent.name}'s budgets",
        href=reverse("policy:agent_budgets", args=[agent.name]),
    )


def _allowlist(agent: Agent, policy: Policy) -> Step:
    rule = policy.document["agents"].get(agent.name) or {}
    own = rule.get("allow")
    allowed = policy.allowed_tools(agent.name)
    done = own is not None
    return Step(
        key="allowlist",
        title="Default-deny allowlist of its own",
        done=done,
        summary=(
            f"It may call {len(allowed)} tool(s): {', '.join(allowed) or 'none'}; every other "
            "tool is denied."
            if done
            else f"No allowlist of its own: it may call every globally allowed tool "
            f"({len(allowed)}). Name the tools it needs, and only those."
        ),
        link_label=f"Edit {agent.name}'s allowlist",
        href=reverse("policy:agent_budgets", args=[agent.name]),
    )


def _validation(agent: Agent, policy: Policy) -> Step:
    allowed = policy.allowed_tools(agent.name)
    missing: dict[str, str] = {}  # tool -> what it lacks
    for tool in allowed:
        rule = policy.tool_rule(tool)
        lacks = [
            what
            for what, schema in (("arguments", rule.args_schema), ("output", rule.output_schema))
            if not schema
        ]
        if lacks:
            missing[tool] = " and ".join(lacks)
    done = bool(allowed) and not missing
    first = next(iter(missing), None)
    return Step(
        key="validation",
        title="Argument and output validation on every tool it may call",
        done=done,
        summary=(
            f"All {len(allowed)} tool(s) have an argument and an output schema."
            if done
            else "No tool allowed yet."
            if not allowed
            else "Without a schema: "
            + "; ".join(f"{tool} ({lacks})" for tool, lacks in missing.items())
            + "."
        ),
        link_label=f"Add schemas to {first}" if first else "Open the policy",
        href=reverse("policy:tool", args=[first]) if first else reverse("policy:current"),
    )


def _write_approvals(agent: Agent, policy: Policy) -> Step:
    writes = [t for t in policy.allowed_tools(agent.name) if policy.tool_rule(t).effect == "write"]
    unguarded = [t for t in writes if not policy.tool_rule_for(t, agent.name).approval_required]
    return Step(
        key="write_approvals",
        title="Writes need approval",
        done=not unguarded,
        summary=(
            "It may call no write tool."
            if not writes
            else f"Each of its {len(writes)} write tool(s) waits for a reviewer: "
            + ", ".join(writes)
            + "."
            if not unguarded
            else "Writes without approval: " + ", ".join(unguarded) + "."
        ),
        link_label=f"Require approval for {unguarded[0]}" if unguarded else "Open the policy",
        href=reverse("policy:tool", args=[unguarded[0]])
        if unguarded
        else reverse("policy:current"),
    )


def _golden_runs(agent: Agent) -> Step:
    count = GoldenRun.objects.filter(run__agent=agent).count()
    return Step(
        key="golden_runs",
        title="Golden runs to replay policy changes against",
        done=count > 0,
        summary=(
            f"{count} golden run(s): every policy change can be replayed against them."
            if count
            else "No golden run: mark a few good runs of this agent as golden from their page."
        ),
        link_label="Golden runs",
        href=reverse("monitoring:golden"),
    )


def _drift_rules(agent: Agent) -> Step:
    rules = list(
        DriftRule.objects.filter(Q(agent=agent) | Q(agent__isnull=True), enabled=True)
        .order_by("name")
        .values_list("name", "agent_id")
    )
    own = [name for name, agent_id in rules if agent_id == agent.pk]
    fleet = [name for name, agent_id in rules if agent_id is None]
    return Step(
        key="drift_rules",
        title="Drift rules watch its tool calls, tokens and latency",
        done=bool(rules),
        summary=(
            (f"Its own: {', '.join(own)}. " if own else "")
            + (f"Fleet-wide: {', '.join(fleet)}." if fleet else "")
            if rules
            else "No enabled drift rule covers it."
        ).strip(),
        link_label="Drift rules",
        href=reverse("monitoring:drift"),
    )


def _rehearsed(agent: Agent, now: datetime) -> Step:
    since = now - timedelta(days=REHEARSAL_DAYS)
    recent = AuditEntry.objects.filter(at__gte=since).order_by("-at", "-id")
    switch = (
        recent.filter(action="kill_switch.set")
        .exclude(after__mode=KillSwitchMode.OFF)
        .only("at", "actor", "after")
        .first()
    )
    pause = (
        recent.filter(
            action__in=("agent.pause", "agent.disable"), target_type="agent", target_id=agent.name
        )
        .only("at", "actor", "action")
        .first()
    )
    facts = [
        f"kill switch turned on {switch.at:%Y-%m-%d} by {switch.actor}"
        if switch
        else f"the kill switch was not turned on in the last {REHEARSAL_DAYS} days",
        f"{agent.name} {pause.action.removeprefix('agent.')}d {pause.at:%Y-%m-%d} by {pause.actor}"
        if pause
        else f"{agent.name} was not paused in the last {REHEARSAL_DAYS} days",
    ]
    todo = "kill switch" if not switch else agent.name
    return Step(
        key="rehearsed",
        title="Kill switch and pause rehearsed",
        done=bool(switch and pause),
        summary="; ".join(facts) + ".",
        link_label="Open the kill switch" if not switch else f"Pause {agent.name} (on its page)",
        href=reverse("kill_switch")
        if todo == "kill switch"
        else reverse("agents:detail", args=[agent.name]),
        facts=facts,
    )


def _enforce(agent: Agent, now: datetime) -> Step:
    enforced = agent.mode == AgentMode.ENFORCE
    if enforced:
        summary = "The gateway's decisions apply: budgets stop runs, writes wait for reviewers."
    else:
        week = would_stops(agent=agent, since=now - timedelta(days=7))
        reasons = ", ".join(f"{kind} {n}" for kind, n in week.by_reason)
        summary = (
            f"Observe mode: in the last 7 days enforcing would have stopped {week.would_stop} of "
            f"{week.observed_runs} run(s)"
            + (f" ({reasons})" if reasons else "")
            + f" and held {week.would_wait} for a reviewer."
        )
    return Step(
        key="enforce",
        title="Enforce mode",
        done=enforced,
        summary=summary,
        link_label=f"Switch {agent.name} to enforce (on its page)",
        href=reverse("agents:detail", args=[agent.name]) + "#mode",
    )


def migration_path(*, agent: Agent, now: datetime | None = None) -> list[Step]:
    """The checklist for one agent, in the seed's order."""
    now = now or timezone.now()
    policy = policy_current()
    return [
        _observed_traffic(agent, now),
        _budgets(agent, policy),
        _allowlist(agent, policy),
        _validation(agent, policy),
        _write_approvals(agent, policy),
        _golden_runs(agent),
        _drift_rules(agent),
        _rehearsed(agent, now),
        _enforce(agent, now),
    ]
