"""Observed runs' periodic work. Thin: each task calls one service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from agents.telemetry import services
from opsconsole.health import SWEEP_TASK_OPTIONS, sweep


@shared_task(name="telemetry.finalize", **SWEEP_TASK_OPTIONS)
@sweep("telemetry.finalize")
def finalize_observed_runs() -> int:
    """End the observed runs whose root span never arrived; purge old runs' spans as trace
    payloads are purged (``OPSCONSOLE_RETENTION_DAYS``)."""
    ended = services.observed_runs_finalize(
        quiet_seconds=settings.OPSCONSOLE_OTLP_ROOT_WAIT_SECONDS
    )
    if settings.OPSCONSOLE_RETENTION_DAYS > 0:
        services.observed_spans_purge(older_than_days=settings.OPSCONSOLE_RETENTION_DAYS)
    return ended
