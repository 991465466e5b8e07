"""Is background work keeping up, and do live updates get through? (the console's health notice)

When the Celery worker, beat or their broker (Redis) is down, the periodic sweeps simply stop:
approvals no longer expire, silent runs are no longer reaped, webhooks wait. Nothing fails loudly,
so each sweep records when it last completed (``sweep``), and ``console_status`` compares that
with its schedule. The heartbeat lives in the database, not the cache: in production the cache is
Redis, the thing that may be down. The embedded default runs the same task bodies on a thread
(opsconsole/scheduler.py), so it records through the same decorator.

The console fetches ``console_status`` from JavaScript (static/js/live.js), so rendering a page
pays nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from opsconsole.context_processors import kill_switch_state
from opsconsole.models import SweepHeartbeat

logger = logging.getLogger("opsconsole.health")

# The sweeps that keep the product's promises, judged by the console (others still record).
WATCHED_SWEEPS = {
    "approvals.expire_due": "approval expiry",
    "runs.reap_silent": "run reaping",
    "approvals.notify_expiring": "expiring-approval notices",
    "webhooks.deliver_due": "webhook delivery",
}
# A sweep is behind when it missed this many of its scheduled runs (and at least
# OPSCONSOLE_SWEEP_STALE_SECONDS went by).
MISSED_RUNS = 3
LIVE_PROBE_SECONDS = 0.8
_PROBE_GROUP = "health.probe"

Body = TypeVar("Body", bound=Callable[..., Any])


# Celery options of every periodic sweep: a lost worker's sweep is redelivered (acks late), a
# failed one retried a few times, a stuck one killed before the next tick piles onto it.
SWEEP_TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "max_retries": 3,
    "default_retry_delay": 2,
    "soft_time_limit": 50,
    "time_limit": 60,
}


def sweep(name: str) -> Callable[[Body], Body]:
    """Record a heartbeat for ``name`` each time the decorated sweep body completes.

    Put it under ``@shared_task``, so Celery workers and the embedded scheduler (which calls
    ``task.run()``) both record. A sweep that raises records nothing.
    """

    def decorator(body: Body) -> Body:
        @wraps(body)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            result = body(*args, **kwargs)
            heartbeat_record(name=name)
            return result

        return recorded  # type: ignore[return-value]

    return decorator


def heartbeat_record(*, name: str, at: datetime | None = None) -> None:
    """One upsert statement. A failure is logged, never raised: the sweep's work is done, and a
    missed heartbeat costs at most a notice in the console."""
    try:
        SweepHeartbeat.objects.bulk_create(
            [SweepHeartbeat(name=name, last_ok_at=at or timezone.now())],
            update_conflicts=True,
            unique_fields=["name"],
            update_fields=["last_ok_at"],
        )
    except DatabaseError as error:
        logger.warning("heartbeat of %s not recorded: %s", name, error)


def sweep_intervals() -> dict[str, float]:
    """Seconds between scheduled runs, by task name (from CELERY_BEAT_SCHEDULE)."""
    intervals: dict[str, float] = {}
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        schedule = entry["schedule"]
        seconds = schedule.total_seconds() if hasattr(schedule, "total_seconds") else schedule
        intervals[entry["task"]] = float(seconds)
    return intervals


def stale_after_seconds(name: str) -> float:
    interval = sweep_intervals().get(name, 0.0)
    return max(float(settings.OPSCONSOLE_SWEEP_STALE_SECONDS), MISSED_RUNS * interval)


# When this process first looked. A sweep that never ran counts as behind once it has had its
# stale period, counted from then, to run: a fresh start (the demo's first page, a worker that
# waits one interval before its first run) is not an outage; a worker that never came up is.
_watching_since: datetime | None = None


def background_status(*, now: datetime | None = None) -> dict[str, Any]:
    """Which watched sweeps are behind (one query)."""
    global _watching_since
    now = now or timezone.now()
    if _watching_since is None:
        _watching_since = now
    last_ok = dict(SweepHeartbeat.objects.values_list("name", "last_ok_at"))
    stale = []
    for name in WATCHED_SWEEPS:
        since = last_ok.get(name) or _watching_since
        if (now - since).total_seconds() > stale_after_seconds(name):
            stale.append(name)
    return {
        "ok": not stale,
        "stale": stale,
        "labels": WATCHED_SWEEPS,
        "last_ok_at": {name: at.isoformat() for name, at in sorted(last_ok.items())},
        "seconds_since": {
            name: round((now - at).total_seconds(), 1) for name, at in sorted(last_ok.items())
        },
    }


def live_status(*, timeout: float = LIVE_PROBE_SECONDS) -> dict[str, Any]:
    """Can the channel layer take a message? A ``group_send`` to a group nobody is in touches
    the layer (Redis) and leaves nothing behind. Bounded by ``timeout``; never raises."""
    layer = get_channel_layer()
    if layer is None:
        return {"ok": False}

    async def probe() -> None:
        await asyncio.wait_for(
            layer.group_send(_PROBE_GROUP, {"type": "health.probe"}), timeout=timeout
        )

    try:
        async_to_sync(probe)()
    except Exception as error:  # noqa: BLE001 - any failure means "not reachable", reported
        logger.debug("channel layer probe failed: %r", error)
        return {"ok": False}
    return {"ok": True}


def console_status() -> dict[str, Any]:
    switch = kill_switch_state()
    return {
        "checked_at": timezone.now().isoformat(),
        "background": background_status(),
        "live": live_status(),
        # The banner's state, so a page that missed a killswitch.changed event while its socket
        # was down (it fetches this after every reconnect) shows the truth again.
        "kill_switch": {"mode": switch.mode, "reason": switch.reason, "set_by": switch.set_by},
    }
