"""The approvals' periodic work. Thin: each task calls one service."""

from __future__ import annotations

from celery import shared_task

from approvals import services
from opsconsole.health import SWEEP_TASK_OPTIONS, sweep


@shared_task(name="approvals.expire_due", **SWEEP_TASK_OPTIONS)
@sweep("approvals.expire_due")
def expire_approvals() -> int:
    return services.approvals_expire_due()


@shared_task(name="approvals.notify_expiring", **SWEEP_TASK_OPTIONS)
@sweep("approvals.notify_expiring")
def notify_expiring_approvals() -> int:
    return services.approvals_notify_expiring()
