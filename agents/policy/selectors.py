"""Reads of policy: the version in force (parsed once per version), its history, the kill switch
and what a kill-switch mode would stop."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Exists, OuterRef, Q

from agents.models import (
    ACTIVE_STATUSES,
    KillSwitch,
    KillSwitchMode,
    PolicyVersion,
    Run,
    RunStatus,
    ToolBreaker,
    ToolCall,
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
    """What turning the kill switch to a mode would do, for the confirmation step.

    ``stop_all`` stops every active run now. The other modes stop no run by themselves: the
    gateway stops a run with ``kill_switch`` at its next call of a tool the mode turns off
    (``dark_tools``). Which runs will make such a call is not known in advance; what is known is
    which active runs have already called one (or wait for approval of one), and those are the
    ``stopping_runs``.
    """

    mode: str
    active_runs: int
    waiting_runs: int
    stopping_runs: int
    stopping_waiting_runs: int
    dark_tools: list[str]
    runs_stop_now: bool

    @property
    def other_runs(self) -> int:
        """Active runs that keep running unless they call a tool the mode turns off."""
        return self.active_runs - self.stopping_runs


def kill_switch_impact(*, mode: str) -> KillSwitchImpact:
    """Computed from the policy in force and the runs active right now (counted in one query)."""
    dark = policy_current().tools_stopped_by(mode)
    waiting = Q(status=RunStatus.WAITING_APPROVAL)
    totals = {"active": Count("id"), "waiting": Count("id", filter=waiting)}
    if mode != KillSwitchMode.STOP_ALL and dark:
        called_dark = Q(Exists(ToolCall.objects.filter(run=OuterRef("pk"), tool__in=dark)))
        totals["stopping"] = Count("id", filter=called_dark)
        totals["stopping_waiting"] = Count("id", filter=called_dark & waiting)
    counts = Run.objects.filter(status__in=ACTIVE_STATUSES).aggregate(**totals)
    if mode == KillSwitchMode.STOP_ALL:
        counts["stopping"], counts["stopping_waiting"] = counts["active"], counts["waiting"]
    return KillSwitchImpact(
        mode=mode,
        active_runs=counts["active"],
        waiting_runs=counts["waiting"],
        stopping_runs=counts.get("stopping", 0),
        stopping_waiting_runs=counts.get("stopping_waiting", 0),
        dark_tools=dark,
        runs_stop_now=mode == KillSwitchMode.STOP_ALL,
    )


def tool_breakers() -> dict[str, ToolBreaker]:
    """Each tool's circuit breaker by tool name (tools that never reported a result have none)."""
    return {breaker.tool: breaker for breaker in ToolBreaker.objects.all()}


# Parsed policies by (number, created_at): a number alone could be reused after a restore of
# the database, the pair cannot.
_policy_cache: dict[tuple, Policy] = {}
