"""Degrade a tool now, and lift it: on-call's containment of a tool, audited and notified."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from agents.gateway.breakers import breaker_force, breaker_unforce
from agents.models import ToolBreaker
from opsconsole.audit import audit_record
from opsconsole.errors import Invalid
from opsconsole.live import broadcast, group_for
from opsconsole.notifications import notify

# The choices offered on the tool page; the service takes any of them.
DEGRADE_MINUTES = (5, 15, 60, 240)


def tool_degrade(*, tool: str, minutes: int, reason: str, actor: str) -> ToolBreaker:
    """Hold the tool's breaker open for ``minutes``: every agent's calls of it stop with
    ``tool_degraded:<tool>`` until the time is up or someone lifts it. Degrading a degraded
    tool again replaces its time and reason."""
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("A reason is required to degrade a tool.", code="reason_required")
    if minutes not in DEGRADE_MINUTES:
        raise Invalid(
            f"minutes must be one of {', '.join(map(str, DEGRADE_MINUTES))}.",
            code="invalid_minutes",
        )
    until = timezone.now() + timedelta(minutes=minutes)
    with transaction.atomic():
        breaker, before = breaker_force(tool=tool, until=until, reason=reason, by=actor)
        after = {"forced_until": until.isoformat(), "forced_reason": reason, "forced_by": actor}
        entry = audit_record(
            actor=actor,
            action="tool.degraded",
            target_type="tool",
            target_id=tool,
            reason=reason,
            before=before,
            after=after,
        )
        notify(
            event="tool.degraded",
            key=f"tool.degraded:{entry.pk}",
            payload={"tool": tool, "until": until.isoformat(), "reason": reason, "by": actor},
        )
        # Every console page follows the killswitch group: its degraded-tools banner refreshes.
        broadcast(
            [group_for("killswitch")], "tools.degraded_changed", {"tool": tool, "degraded": True}
        )
    return breaker


def tool_restore(*, tool: str, actor: str, reason: str = "") -> ToolBreaker | None:
    """Lift a person's degrade now; the breaker goes on from its own state. Lifting a tool that
    is not degraded changes nothing and records nothing (a double click is harmless)."""
    with transaction.atomic():
        breaker, before = breaker_unforce(tool=tool)
        if breaker is None or not before.get("forced_until"):
            return breaker
        entry = audit_record(
            actor=actor,
            action="tool.restored",
            target_type="tool",
            target_id=tool,
            reason=(reason or "").strip(),
            before=before,
            after={"forced_until": None, "forced_reason": "", "forced_by": ""},
        )
        notify(
            event="tool.restored",
            key=f"tool.restored:{entry.pk}",
            payload={"tool": tool, "by": actor, "was": before},
        )
        broadcast(
            [group_for("killswitch")], "tools.degraded_changed", {"tool": tool, "degraded": False}
        )
    return breaker
