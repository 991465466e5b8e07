"""Reads of policy: the version in force (parsed once per version), its history, the kill switch
and what a kill-switch mode would stop."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q

from agents.models import (
    ACTIVE_STATUSES,
    KillSwitch,
    KillSwitchMode,
    PolicyVersion,
    Run,
    ToolBreaker,
)
from agents.policy.document import Policy
from opsconsole.errors import NotFound


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


# Parsed policies by (number, created_at): a number alone could be reused after a restore of
# the database, the pair cannot.
_policy_cache: dict[tuple, Policy] = {}
