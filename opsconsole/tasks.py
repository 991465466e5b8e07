"""Background work on webhooks. Thin: each task calls one service with an ID."""

from __future__ import annotations

from celery import shared_task

from opsconsole import webhooks
from opsconsole.health import sweep

_common = {"acks_late": True, "soft_time_limit": 50, "time_limit": 60}


@shared_task(name="webhooks.deliver", max_retries=0, **_common)
def deliver_webhook(delivery_id: int) -> str:
    # Retries are scheduled in the delivery row (next_attempt_at) and picked up by
    # webhooks.deliver_due, so a lost message or a killed worker loses nothing.
    return webhooks.webhook_deliver(delivery_id=delivery_id)


@shared_task(name="webhooks.deliver_due", **_common)
@sweep("webhooks.deliver_due")
def deliver_due_webhooks() -> int:
    return webhooks.webhooks_deliver_due()
