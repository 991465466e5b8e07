"""Per-tool circuit breakers (degrade mode): admit a call or refuse it with ``tool_degraded``,
and update the breaker from each reported result. Called in the gateway's transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.utils import timezone

from agents.models import (
    BreakerState,
    ToolBreaker,
    ToolCall,
)
from agents.policy.document import ToolRule
from opsconsole.live import broadcast, group_for


def breaker_admit(tool: str, rule: ToolRule) -> tuple[ToolBreaker | None, bool]:
    """Returns (breaker or None, degraded?). An open breaker turns half-open after its cool-down.

    A closed breaker is only read: the decisions of one tool never queue on its row (a
    ``SELECT ... FOR UPDATE`` here made every decision of a tool wait for the one before it). The
    row is locked only when there is a state to claim: an open breaker turning half-open and the
    trial calls of a half-open one (the caller spends a trial slot on the locked row). A person's
    degrade (``forced_until`` in the future) refuses the call whatever the state, and leaves the
    state alone: when it ends or is lifted, the breaker goes on as it was."""
    now = timezone.now()
    breaker = ToolBreaker.objects.filter(tool=tool).first()
    if breaker is None:
        return None, False
    if breaker.forced_at(now):
        return breaker, True
    if breaker.state == BreakerState.CLOSED:
        return breaker, False
    # Open or half-open: claim under the row's lock (read again: it may have moved meanwhile).
    breaker = ToolBreaker.objects.select_for_update().get(pk=breaker.pk)
    if breaker.forced_at(now):
        return breaker, True
    if breaker.state == BreakerState.CLOSED:
        return breaker, False
    if breaker.state == BreakerState.OPEN:
        cooled = breaker.opened_at and now - breaker.opened_at >= timedelta(
            seconds=rule.breaker["cooldown_seconds"]
        )
        if not cooled:
            return breaker, True
        breaker.state = BreakerState.HALF_OPEN
        breaker.trial_calls_left = rule.breaker["trial_calls"]
        breaker.save(update_fields=["state", "trial_calls_left", "updated_at"])
        _broadcast_breaker(breaker)
    return breaker, breaker.trial_calls_left <= 0


def _broadcast_breaker(breaker: ToolBreaker) -> None:
    broadcast(
        [group_for("breakers")], "breaker.updated", {"tool": breaker.tool, "state": breaker.state}
    )


def breaker_window(results: int, failures: int, settings: dict) -> tuple[float, bool]:
    """A closed breaker's failure rate over its window of recent results, and whether it opens
    (the gateway's fast report, ``agents.gateway.core.report_steps``, asks the same)."""
    rate = failures / results if results else 0.0
    return rate, results >= settings["min_calls"] and rate >= settings["failure_rate"]


def breaker_record(tool: str, ok: bool, rule: ToolRule) -> None:
    """Update the tool's breaker from one reported result (in the caller's transaction)."""
    breaker, _ = ToolBreaker.objects.get_or_create(tool=tool)
    breaker = ToolBreaker.objects.select_for_update().get(pk=breaker.pk)
    settings = rule.breaker
    now = timezone.now()
    if breaker.state == BreakerState.HALF_OPEN:
        if ok:
            breaker.state, breaker.opened_at, breaker.window_start = BreakerState.CLOSED, None, now
        else:
            breaker.state, breaker.opened_at = BreakerState.OPEN, now
        breaker.failure_rate = 0.0 if ok else 1.0
        breaker.save()
        _broadcast_breaker(breaker)
        return
    if breaker.state == BreakerState.OPEN:
        return  # late results of calls allowed before it opened change nothing
    recent = ToolCall.objects.filter(tool=tool, reported_at__isnull=False)
    if breaker.window_start:
        recent = recent.filter(reported_at__gte=breaker.window_start)
    results = list(
        recent.order_by("-reported_at").values_list("result_ok", flat=True)[: settings["window"]]
    )
    failures = sum(1 for r in results if not r)
    rate, opens = breaker_window(len(results), failures, settings)
    breaker.failure_rate = rate
    if opens:
        breaker.state, breaker.opened_at = BreakerState.OPEN, now
        breaker.save()
        _broadcast_breaker(breaker)
    else:
        breaker.save(update_fields=["failure_rate", "updated_at"])


def breaker_forced_detail(breaker: ToolBreaker | None) -> str | None:
    """The stop detail of a call refused by a person's degrade (None if it was not forced)."""
    if breaker is None or breaker.forced_until is None or not breaker.forced_at(timezone.now()):
        return None
    until = breaker.forced_until.astimezone(UTC)
    return f"degraded by {breaker.forced_by} until {until:%Y-%m-%d %H:%M:%S} UTC: {breaker.forced_reason}"


def breaker_force(*, tool: str, until: datetime, reason: str, by: str) -> tuple[ToolBreaker, dict]:
    """Hold the tool's breaker open until ``until`` (in the caller's transaction); returns the
    breaker and what its degrade was before (for the audit)."""
    ToolBreaker.objects.get_or_create(tool=tool)
    breaker = ToolBreaker.objects.select_for_update().get(tool=tool)
    before = _forced_fields(breaker)
    breaker.forced_until, breaker.forced_reason, breaker.forced_by = until, reason, by
    breaker.save(update_fields=["forced_until", "forced_reason", "forced_by", "updated_at"])
    _broadcast_breaker(breaker)
    return breaker, before


def breaker_unforce(*, tool: str) -> tuple[ToolBreaker | None, dict]:
    """End a person's degrade now (in the caller's transaction); None if the tool has no breaker."""
    breaker = ToolBreaker.objects.select_for_update().filter(tool=tool).first()
    if breaker is None:
        return None, {}
    before = _forced_fields(breaker)
    breaker.forced_until, breaker.forced_reason, breaker.forced_by = None, "", ""
    breaker.save(update_fields=["forced_until", "forced_reason", "forced_by", "updated_at"])
    _broadcast_breaker(breaker)
    return breaker, before


def _forced_fields(breaker: ToolBreaker) -> dict:
    return {
        "forced_until": breaker.forced_until.isoformat() if breaker.forced_until else None,
        "forced_reason": breaker.forced_reason,
        "forced_by": breaker.forced_by,
    }
