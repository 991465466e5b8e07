"""Monitoring: metric rollups, drift rules and their alerts (services and selectors).

Rollups are computed from raw rows (runs, step events, tool calls, approval requests) by the
background job only (``rollups_compute``, task ``monitoring.rollup``); pages read
``MetricRollup`` rows and never aggregate raw events.

- A run belongs to the bucket in which it **ended**: its counters are final then, so
  recomputing the current and previous buckets is enough and the job is an idempotent upsert.
- Every bucket is computed from raw rows (a day is not made of hours): percentiles do not add.
- Percentiles are **nearest-rank**: the p-th percentile of n sorted values is the value at rank
  ceil(p/100 * n) (1-based). It is always an observed value, exact and reproducible.
- Rows exist per (agent, version), per (agent, every version ``"*"``) and for every agent
  (agent NULL, ``"*"``), so a chart or a rule can compare versions or look at the fleet.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from agents import stop_reasons
from agents.models import (
    ALL_VERSIONS,
    Agent,
    BucketSize,
    DriftAction,
    DriftAlert,
    DriftBaseline,
    DriftDirection,
    DriftMetric,
    DriftRule,
    EventKind,
    MetricRollup,
    Run,
    ToolCall,
    TraceEvent,
)
from approvals.models import ApprovalRequest, ApprovalStatus
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, Invalid, NotFound
from opsconsole.notifications import notify

SIZES = {BucketSize.HOUR: timedelta(hours=1), BucketSize.DAY: timedelta(days=1)}
BASELINE_DAYS = 7
PINNED_BASELINE_DAYS = 30


# --- percentiles and buckets ------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile (see the module docstring); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[rank - 1])


def bucket_start(moment: datetime, size: str) -> datetime:
    """The start (UTC) of the hour or day containing ``moment``."""
    moment = moment.astimezone(UTC)
    if size == BucketSize.DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


# --- rollups ----------------------------------------------------------------------------------

_Key = tuple[int | None, str]  # (agent id or None for every agent, version or "*")


@dataclass
class _Samples:
    runs: int = 0
    stop_reasons: dict[str, int] | None = None
    tool_calls: list[int] | None = None
    usd: list[Decimal] | None = None
    tokens: list[int] | None = None
    waits: list[float] | None = None
    latencies: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        self.stop_reasons = {}
        self.tool_calls, self.usd, self.tokens, self.waits = [], [], [], []
        self.latencies = defaultdict(list)


def _keys(agent_id: int, version: str) -> tuple[_Key, ...]:
    return ((agent_id, version), (agent_id, ALL_VERSIONS), (None, ALL_VERSIONS))


def rollup_bucket(*, size: str, start: datetime) -> int:
    """Recompute every rollup row of one bucket from raw rows; returns the rows written."""
    end = start + SIZES[size]
    ended = Run.objects.filter(ended_at__gte=start, ended_at__lt=end)
    samples: dict[_Key, _Samples] = defaultdict(_Samples)
    run_keys: dict[int, tuple[_Key, ...]] = {}

    for run_id, agent_id, version, calls, usd, reason in ended.values_list(
        "pk", "agent_id", "agent_version", "tool_calls", "usd", "stop_reason"
    ).iterator(chunk_size=2000):
        keys = run_keys[run_id] = _keys(agent_id, version)
        for key in keys:
            sample = samples[key]
            sample.runs += 1
            sample.stop_reasons[reason] = sample.stop_reasons.get(reason, 0) + 1
            sample.tool_calls.append(calls)
            sample.usd.append(usd)

    steps = TraceEvent.objects.filter(
        kind=EventKind.STEP, run__ended_at__gte=start, run__ended_at__lt=end
    ).values_list("run_id", "data__tokens_in", "data__tokens_out")
    for run_id, tokens_in, tokens_out in steps.iterator(chunk_size=5000):
        for key in run_keys.get(run_id, ()):
            samples[key].tokens.append(int(tokens_in or 0) + int(tokens_out or 0))

    waits = ApprovalRequest.objects.filter(
        run__ended_at__gte=start, run__ended_at__lt=end, decided_at__isnull=False
    ).exclude(status=ApprovalStatus.CANCELLED)
    for run_id, created, decided in waits.values_list("run_id", "created_at", "decided_at"):
        for key in run_keys.get(run_id, ()):
            samples[key].waits.append((decided - created).total_seconds())

    results = ToolCall.objects.filter(
        run__ended_at__gte=start, run__ended_at__lt=end, latency_ms__isnull=False
    ).values_list("run_id", "tool", "latency_ms")
    for run_id, tool, latency in results.iterator(chunk_size=5000):
        for key in run_keys.get(run_id, ()):
            samples[key].latencies[tool].append(latency)

    now = timezone.now()
    with transaction.atomic():
        for (agent_id, version), sample in samples.items():
            _upsert(agent_id, version, size, start, _fields(sample, now))
        # A series with no runs left in the bucket (e.g. they were deleted) keeps no stale row.
        existing = MetricRollup.objects.filter(size=size, start=start).values_list(
            "pk", "agent_id", "agent_version"
        )
        stale = [pk for pk, agent_id, version in existing if (agent_id, version) not in samples]
        if stale:
            MetricRollup.objects.filter(pk__in=stale).delete()
    return len(samples)


def _fields(sample: _Samples, now: datetime) -> dict[str, Any]:
    every_latency = [ms for values in sample.latencies.values() for ms in values]
    usd_sum = sum(sample.usd, Decimal("0"))
    return {
        "runs": sample.runs,
        "stop_reasons": dict(sorted(sample.stop_reasons.items())),
        "tool_calls_p50": percentile(sample.tool_calls, 50),
        "tool_calls_p95": percentile(sample.tool_calls, 95),
        "requests": len(sample.tokens),
        "tokens_p50": percentile(sample.tokens, 50),
        "tokens_p95": percentile(sample.tokens, 95),
        "usd_sum": usd_sum,
        "usd_avg": (usd_sum / sample.runs).quantize(Decimal("0.000001")) if sample.runs else None,
        "approvals": len(sample.waits),
        "approval_wait_p50": percentile(sample.waits, 50),
        "approval_wait_p95": percentile(sample.waits, 95),
        "tool_results": len(every_latency),
        "latency_p95": percentile(every_latency, 95),
        "tool_latency_p95": {
            tool: percentile(values, 95) for tool, values in sorted(sample.latencies.items())
        },
        "computed_at": now,
    }


def _upsert(agent_id: int | None, version: str, size: str, start: datetime, fields: dict) -> None:
    key = {"agent_id": agent_id, "agent_version": version, "size": size, "start": start}
    if MetricRollup.objects.filter(**key).update(**fields):
        return
    try:
        with transaction.atomic():
            MetricRollup.objects.create(**key, **fields)
    except IntegrityError:
        # Another rollup job created the row between our UPDATE and INSERT: same numbers.
        MetricRollup.objects.filter(**key).update(**fields)


def rollups_compute(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic job: recompute the current and previous hour and day, then drift rules.

    Idempotent: running it twice (or in two processes) writes the same rows.
    """
    now = now or timezone.now()
    written = 0
    evaluated: list[tuple[str, datetime]] = []
    for size, length in SIZES.items():
        current = bucket_start(now, size)
        for start in (current - length, current):
            written += rollup_bucket(size=size, start=start)
            evaluated.append((size, start))
    alerts = sum(drift_evaluate(size=size, start=start) for size, start in evaluated)
    return {"rollups": written, "alerts": alerts}


# --- selectors for the monitoring page --------------------------------------------------------


def rollup_series(
    *, agent: Agent | None, version: str, size: str, since: datetime, until: datetime
) -> list[MetricRollup]:
    """The rollup rows of one series (agent or every agent, version or ``"*"``), oldest first."""
    rows = MetricRollup.objects.filter(
        agent=agent, agent_version=version or ALL_VERSIONS, size=size, start__gte=since
    ).filter(start__lt=until)
    return list(rows.order_by("start"))


def agent_versions() -> dict[str, list[str]]:
    """{agent name: [versions seen in rollups]} for the page's pickers."""
    result: dict[str, list[str]] = defaultdict(list)
    rows = (
        MetricRollup.objects.filter(agent__isnull=False)
        .exclude(agent_version=ALL_VERSIONS)
        .values_list("agent__name", "agent_version")
        .distinct()
        .order_by("agent__name", "agent_version")
    )
    for name, version in rows:
        result[name].append(version)
    return dict(result)


def drift_alert_list(*, limit: int = 50) -> list[DriftAlert]:
    return list(
        DriftAlert.objects.select_related("rule", "agent").order_by("-created_at", "-id")[:limit]
    )


def drift_rule_list() -> QuerySet[DriftRule]:
    return DriftRule.objects.select_related("agent").order_by("name")


# --- drift ------------------------------------------------------------------------------------

# The samples behind each metric: a bucket with fewer than a rule's min_samples is noise.
SAMPLES_OF = {
    DriftMetric.STOP_RATE: "runs",
    DriftMetric.TOOL_CALLS_P50: "runs",
    DriftMetric.TOOL_CALLS_P95: "runs",
    DriftMetric.TOKENS_P50: "requests",
    DriftMetric.TOKENS_P95: "requests",
    DriftMetric.USD_AVG: "runs",
    DriftMetric.LATENCY_P95: "tool_results",
    DriftMetric.APPROVAL_WAIT_P95: "approvals",
}


def metric_value(rollup: MetricRollup, metric: str) -> float | None:
    if metric == DriftMetric.STOP_RATE:
        if not rollup.runs:
            return None
        not_ok = sum(n for reason, n in rollup.stop_reasons.items() if reason != stop_reasons.OK)
        return not_ok / rollup.runs
    value = getattr(rollup, metric)
    return None if value is None else float(value)


@dataclass(frozen=True)
class DriftCheck:
    """One rule's comparison of a bucket with its baseline."""

    value: float
    samples: int
    baseline_mean: float
    baseline_std: float | None
    baseline_samples: int
    relative_change: float | None
    z_score: float | None
    fired: bool


def drift_check(
    rule: DriftRule, current: MetricRollup, baseline: list[MetricRollup]
) -> DriftCheck | None:
    """Compare a bucket with its baseline buckets; None when there is too little to say.

    The baseline is the mean (and sample standard deviation) of the metric over the baseline
    buckets that have data. Every threshold the rule sets must be passed in its direction.
    """
    samples_field = SAMPLES_OF[rule.metric]
    samples = getattr(current, samples_field)
    value = metric_value(current, rule.metric)
    points = [
        (v, getattr(row, samples_field))
        for row in baseline
        if (v := metric_value(row, rule.metric)) is not None
    ]
    baseline_samples = sum(n for _, n in points)
    if value is None or samples < rule.min_samples or baseline_samples < rule.min_samples:
        return None
    values = [v for v, _ in points]
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) >= 2 else None
    relative = (value - mean) / abs(mean) if mean else None
    z = (value - mean) / std if std else None
    sign = {DriftDirection.UP: 1, DriftDirection.DOWN: -1}.get(rule.direction)

    def passes(measure: float | None, threshold: float | None) -> bool:
        if threshold is None:
            return True
        if measure is None:
            # No spread (or a zero mean) to measure against: a z-score or relative move is
            # undefined, and an undefined move never fires.
            return False
        return measure * sign >= threshold if sign else abs(measure) >= threshold

    fired = passes(relative, rule.relative_threshold) and passes(z, rule.z_threshold)
    return DriftCheck(value, samples, mean, std, baseline_samples, relative, z, fired)


def _baseline_rows(rule: DriftRule, version: str, size: str, start: datetime) -> list[MetricRollup]:
    rows = MetricRollup.objects.filter(agent=rule.agent, size=size, start__lt=start)
    if rule.baseline == DriftBaseline.PINNED_VERSION:
        rows = rows.filter(
            agent_version=rule.baseline_version,
            start__gte=start - timedelta(days=PINNED_BASELINE_DAYS),
        )
    else:
        rows = rows.filter(agent_version=version, start__gte=start - timedelta(days=BASELINE_DAYS))
    return list(rows)


def drift_evaluate(*, size: str, start: datetime) -> int:
    """Evaluate every enabled rule of this bucket size on one bucket; returns alerts raised."""
    raised = 0
    for rule in DriftRule.objects.filter(enabled=True, size=size).select_related("agent"):
        version = rule.agent_version or ALL_VERSIONS
        current = MetricRollup.objects.filter(
            agent=rule.agent, agent_version=version, size=size, start=start
        ).first()
        if current is None or DriftAlert.objects.filter(rule=rule, bucket_start=start).exists():
            continue
        check = drift_check(rule, current, _baseline_rows(rule, version, size, start))
        if (
            check is not None
            and check.fired
            and drift_alert_raise(rule=rule, start=start, check=check)
        ):
            raised += 1
    return raised


def drift_alert_raise(*, rule: DriftRule, start: datetime, check: DriftCheck) -> DriftAlert | None:
    """Store the alert, notify, and take the rule's action; once per rule and bucket."""
    try:
        with transaction.atomic():
            alert = DriftAlert.objects.create(
                rule=rule,
                agent=rule.agent,
                agent_version=rule.agent_version,
                metric=rule.metric,
                bucket_start=start,
                value=check.value,
                baseline_mean=check.baseline_mean,
                baseline_std=check.baseline_std,
                relative_change=check.relative_change,
                z_score=check.z_score,
                samples=check.samples,
                baseline_samples=check.baseline_samples,
            )
            alert.action_taken = _act(rule, alert)
            alert.save(update_fields=["action_taken"])
            notify(
                event="drift.alert",
                key=f"drift:{rule.pk}:{start.isoformat()}",
                payload=_payload(alert),
            )
    except IntegrityError:
        return None  # another evaluator raised this very alert
    return alert


def _payload(alert: DriftAlert) -> dict[str, Any]:
    return {
        "id": alert.pk,
        "rule": alert.rule.name,
        "agent": alert.agent.name if alert.agent else None,
        "agent_version": alert.agent_version or None,
        "metric": alert.metric,
        "bucket_start": alert.bucket_start.isoformat(),
        "value": alert.value,
        "baseline_mean": alert.baseline_mean,
        "relative_change": alert.relative_change,
        "z_score": alert.z_score,
        "samples": alert.samples,
        "action": alert.rule.action,
        "action_taken": alert.action_taken,
    }


def _act(rule: DriftRule, alert: DriftAlert) -> str:
    """Take an acting rule's action through the same services a person would use, as
    ``rule:<name>``, so the audit log shows who (which rule) did it and why."""
    if rule.action == DriftAction.NONE or rule.agent is None:
        return ""
    from agents.services import agent_set_enabled, policy_amend

    reason = (
        f"drift alert {alert.pk}: {rule.get_metric_display()} is {alert.value:.4g} "
        f"against a baseline of {alert.baseline_mean:.4g}"
    )
    if rule.action == DriftAction.DISABLE_AGENT:
        if not rule.agent.enabled:
            return "agent already disabled"
        agent_set_enabled(agent=rule.agent, enabled=False, actor=rule.actor, reason=reason)
        return "agent disabled"
    agent_name = rule.agent.name

    def approve_all_writes(document: dict[str, Any]) -> bool:
        entry = document["agents"].setdefault(agent_name, {"allow": None, "budgets": {}})
        if entry.get("approve_all_writes"):
            return False
        entry["approve_all_writes"] = True
        return True

    version = policy_amend(change=approve_all_writes, author=rule.actor, reason=reason)
    if version is None:
        return "writes already need approval"
    return f"writes need approval (policy v{version.number})"


# --- rules (admin) ----------------------------------------------------------------------------


def drift_rule_save(*, actor: str, fields: dict[str, Any], rule_id: int | None = None) -> DriftRule:
    """Create or change a drift rule; audited."""
    with transaction.atomic():
        if rule_id is None:
            if DriftRule.objects.filter(name=fields.get("name")).exists():
                raise Conflict(f"A rule named {fields.get('name')!r} exists.", code="rule_exists")
            rule, before = DriftRule(created_by=actor), None
        else:
            rule = DriftRule.objects.select_for_update().filter(pk=rule_id).first()
            if rule is None:
                raise NotFound(f"No drift rule {rule_id}.")
            before = _rule_dict(rule)
        for name, value in fields.items():
            setattr(rule, name, value)
        problems = _rule_problems(rule)
        if problems:
            raise Invalid(problems, code="invalid_rule")
        rule.save()
        audit_record(
            actor=actor,
            action="drift_rule.save",
            target_type="drift_rule",
            target_id=rule.name,
            before=before,
            after=_rule_dict(rule),
        )
    return rule


def _rule_problems(rule: DriftRule) -> list[str]:
    problems = []
    if rule.relative_threshold is None and rule.z_threshold is None:
        problems.append("Set a relative threshold, a z-score threshold, or both.")
    if rule.action != DriftAction.NONE and rule.agent_id is None:
        problems.append("A rule that acts must name its agent.")
    if rule.baseline == DriftBaseline.PINNED_VERSION and not rule.baseline_version:
        problems.append("A pinned baseline needs the version to compare with.")
    return problems


def _rule_dict(rule: DriftRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "metric": rule.metric,
        "agent": rule.agent.name if rule.agent_id else None,
        "agent_version": rule.agent_version,
        "size": rule.size,
        "baseline": rule.baseline,
        "baseline_version": rule.baseline_version,
        "direction": rule.direction,
        "relative_threshold": rule.relative_threshold,
        "z_threshold": rule.z_threshold,
        "min_samples": rule.min_samples,
        "action": rule.action,
        "enabled": rule.enabled,
    }


# --- the monitoring page ----------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesKey:
    """One line of the page: an agent (or every agent) and a version (or every version)."""

    agent: str  # "" for every agent
    version: str  # "" for every version

    @property
    def label(self) -> str:
        return f"{self.agent or 'every agent'} · {self.version or 'every version'}"


@dataclass(frozen=True)
class Dashboard:
    size: str
    buckets: list[datetime]
    # Per series, one rollup (or None) per bucket.
    series: list[tuple[SeriesKey, list[MetricRollup | None]]]
    stop_reason_kinds: list[str]


def dashboard(
    *, keys: list[SeriesKey], size: str, buckets: int, now: datetime | None = None
) -> Dashboard:
    """The rollups of one or two series over the last ``buckets`` buckets, aligned by bucket.

    One query per series (plus one for the agents named): nothing is aggregated here.
    """
    length = SIZES[size]
    last = bucket_start(now or timezone.now(), size)
    starts = [last - length * index for index in range(buckets - 1, -1, -1)]
    names = {key.agent for key in keys if key.agent}
    agents = {agent.name: agent for agent in Agent.objects.filter(name__in=names)} if names else {}
    series = []
    kinds: set[str] = set()
    for key in keys:
        rows: dict[datetime, MetricRollup] = {}
        if not key.agent or key.agent in agents:
            found = rollup_series(
                agent=agents.get(key.agent),
                version=key.version,
                size=size,
                since=starts[0],
                until=last + length,
            )
            rows = {row.start: row for row in found}
        for row in rows.values():
            kinds.update(stop_reasons.kind_of(reason) for reason in row.stop_reasons)
        series.append((key, [rows.get(start) for start in starts]))
    order = [kind for kind in stop_reasons.ALL_KINDS if kind in kinds]
    return Dashboard(size=size, buckets=starts, series=series, stop_reason_kinds=order)


def stop_reason_kinds(rollup: MetricRollup | None) -> dict[str, int]:
    """A rollup's stop reasons counted by kind (``tool_denied:x`` and ``:y`` together)."""
    counts: dict[str, int] = defaultdict(int)
    for reason, n in (rollup.stop_reasons if rollup else {}).items():
        counts[stop_reasons.kind_of(reason)] += n
    return dict(counts)
