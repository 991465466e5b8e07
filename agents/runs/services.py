"""The run record: its trace events, its live update and its end.

These are the primitives every writer of a run shares (the gateway's use cases, the approvals
lifecycle, an operator's cancel). They never touch approvals: whoever stops a run settles its
pending approval requests too (``approvals.services.approvals_cancel_for_run``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from agents import stop_reasons
from agents.models import (
    Agent,
    EventKind,
    Run,
    RunStatus,
    ToolCall,
    TraceEvent,
)
from opsconsole.errors import NotFound
from opsconsole.live import broadcast_many, group_for


def run_event_record(
    run: Run, kind: str, data: dict[str, Any], tool_call: ToolCall | None = None
) -> TraceEvent:
    """Append one event to the run's trace."""
    return TraceEvent.objects.create(
        run=run, kind=kind, data=data, tool_call=tool_call, at=timezone.now()
    )


def run_broadcast(run: Run) -> None:
    """Open runs lists and this run's page update (after commit; see opsconsole/live.py)."""
    run_broadcast_many([run])


def run_broadcast_many(runs: list[Run]) -> None:
    """``run_broadcast`` for several runs, sent together."""
    broadcast_many(
        [
            (
                [group_for("runs"), group_for("run", run.pk)],
                "run.updated",
                {
                    "id": run.pk,
                    "agent": run.agent.name,
                    "status": run.status,
                    "stop_reason": run.stop_reason,
                    "usage": run.usage(),
                    "budgets": run.budgets(),
                },
            )
            for run in runs
        ]
    )


def run_lock_for_agent(*, agent: Agent, run_id: int) -> Run:
    """The agent's own run, locked (``SELECT ... FOR UPDATE``) for one decision, with the agent's
    enabled state as of now (``agent_state_hold``)."""
    run = Run.objects.select_for_update().filter(pk=run_id, agent=agent).first()
    if run is None:
        raise NotFound(f"No run {run_id} for this agent.")
    run.agent = agent_state_hold(agent)
    return run


def agent_state_hold(agent: Agent) -> Agent:
    """Refresh the agent's enabled state (and its mode) inside the caller's transaction, and hold
    it there.

    The row the request authenticated with can be a few milliseconds old: a pause committed
    since would let one more call through, stamped after the pause. Read here, under
    ``FOR KEY SHARE`` on PostgreSQL (it conflicts only with the ``FOR UPDATE`` a pause or disable
    takes, not with other decisions), a pause either committed first and this decision sees it,
    or waits for this decision to commit and is stamped after it. SQLite runs one writing
    transaction at a time, which gives the same order.
    """
    sql = (
        f"SELECT enabled, paused, disabled_reason, disabled_by, mode FROM {Agent._meta.db_table} "
        "WHERE id = %s"
    )
    if connection.vendor == "postgresql":
        sql += " FOR KEY SHARE"
    with connection.cursor() as cursor:
        cursor.execute(sql, [agent.pk])
        row = cursor.fetchone()
    if row is not None:
        enabled, paused, agent.disabled_reason, agent.disabled_by, agent.mode = row
        agent.enabled, agent.paused = bool(enabled), bool(paused)  # SQLite answers 0 or 1
    return agent


def run_wait_begin(run: Run, now: datetime) -> list[str]:
    """A locked run starts waiting for people (an approval request): from ``now`` its time
    no longer counts against max_seconds. Sets ``status``; returns the fields to save."""
    run.status = RunStatus.WAITING_APPROVAL
    if run.waiting_since is None:
        run.waiting_since = now
    return ["status", "waiting_since"]


def run_wait_end(run: Run, now: datetime) -> list[str]:
    """A locked run's open wait (if any) ends at ``now`` and joins ``waited_seconds``; the
    caller sets the new status. Returns the fields to save."""
    if run.waiting_since is None:
        return []
    run.waited_seconds += max(0.0, (now - run.waiting_since).total_seconds())
    run.waiting_since = None
    return ["waited_seconds", "waiting_since"]


def run_stop_locked(run: Run, reason: str, detail: str = "") -> None:
    """End a locked, active run with one stop reason. A stopped run stays stopped."""
    assert stop_reasons.is_valid(reason), reason
    now = timezone.now()
    waits = run_wait_end(run, now)
    run.status = RunStatus.STOPPED
    run.stop_reason = reason
    run.ended_at = now
    run.last_activity_at = now
    run.save(update_fields=["status", "stop_reason", "ended_at", "last_activity_at", *waits])
    run_event_record(run, EventKind.STOP, {"stop_reason": reason, "detail": detail})
    run_broadcast(run)
