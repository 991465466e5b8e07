"""Drift rules and alerts: a rollup compared with its baseline, and what a rule does when it
fires (notify, disable the agent, or remove a tool from its allowlist)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from agents import stop_reasons
from agents.models import (
    ALL_VERSIONS,
    DriftAction,
    DriftAlert,
    DriftBaseline,
    DriftDirection,
    DriftMetric,
    DriftRule,
    MetricRollup,
)
from agents.policy.services import policy_amend
from agents.registry.services import agent_set_enabled
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, Invalid, NotFound
from opsconsole.notifications import notify

BASELINE_DAYS = 7


PINNED_BASELINE_DAYS = 30


def drift_alert_list(*, limit: int = 50) -> list[DriftAlert]:
    return list(
        DriftAlert.objects.select_related("rule", "agent").order_by("-created_at", "-id")[:limit]
    )


def drift_rule_list() -> QuerySet[DriftRule]:
    return DriftRule.objects.select_related("agent").order_by("name")


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
