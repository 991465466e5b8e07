"""Periodic and triggered background work. Thin: each task calls one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from agents.gateway import services
from opsconsole.health import SWEEP_TASK_OPTIONS, sweep


@shared_task(name="runs.reap_silent", **SWEEP_TASK_OPTIONS)
@sweep("runs.reap_silent")
def reap_runs() -> int:
    return services.runs_reap_silent(grace_seconds=settings.OPSCONSOLE_REAP_GRACE_SECONDS)


@shared_task(name="killswitch.sweep", **SWEEP_TASK_OPTIONS)
def kill_switch_sweep() -> int:
    return services.runs_stop_all_for_kill_switch()


@shared_task(name="traces.purge", **SWEEP_TASK_OPTIONS)
@sweep("traces.purge")
def purge_traces() -> int:
    if settings.OPSCONSOLE_RETENTION_DAYS <= 0:
        return 0
    return services.traces_purge(older_than_days=settings.OPSCONSOLE_RETENTION_DAYS)
