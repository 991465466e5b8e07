"""Monitoring's periodic work. Thin: each task calls one service."""

from __future__ import annotations

from celery import shared_task

from agents.monitoring import rollups
from opsconsole.health import SWEEP_TASK_OPTIONS, sweep


@shared_task(name="monitoring.rollup", **SWEEP_TASK_OPTIONS)
@sweep("monitoring.rollup")
def rollup_metrics() -> dict[str, int]:
    return rollups.rollups_compute()
