"""Periodic and triggered background work. Thin: each task calls one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from agents import monitoring, services
from approvals import services as approval_services
from opsconsole.health import sweep

_common = {
    "acks_late": True,
    "max_retries": 3,
    "default_retry_delay": 2,
    "soft_time_limit": 50,
    "time_limit": 60,
}


@shared_task(name="approvals.expire_due", **_common)
@sweep("approvals.expire_due")
def expire_approvals() -> int:
    return approval_services.approvals_expire_due()


@shared_task(name="runs.reap_silent", **_common)
@sweep("runs.reap_silent")
def reap_runs() -> int:
    return services.runs_reap_silent(grace_seconds=settings.OPSCONSOLE_REAP_GRACE_SECONDS)


@shared_task(name="killswitch.sweep", **_common)
def kill_switch_sweep() -> int:
    return services.runs_stop_all_for_kill_switch()


@shared_task(name="traces.purge", **_common)
@sweep("traces.purge")
def purge_traces() -> int:
    if settings.OPSCONSOLE_RETENTION_DAYS <= 0:
        return 0
    return services.traces_purge(older_than_days=settings.OPSCONSOLE_RETENTION_DAYS)


@shared_task(name="monitoring.rollup", **_common)
@sweep("monitoring.rollup")
def rollup_metrics() -> dict[str, int]:
    return monitoring.rollups_compute()
