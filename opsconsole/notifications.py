"""Outgoing notices: one webhook delivery per event and interested endpoint (the outbox).

``notify`` only inserts rows (inside the caller's transaction, so a rolled-back decision sends
nothing); sending happens later, in a Celery task or the embedded scheduler, so a slow or broken
receiver never blocks a gateway decision.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from opsconsole.models import WebhookDelivery, WebhookEndpoint
from opsconsole.tasks import deliver_webhook

EVENTS = (
    "approval.requested",
    "approval.expiring",
    "kill_switch.changed",
    "budget.crossed_80",
    "drift.alert",
    "tool.degraded",
    "tool.restored",
    "agent.paused",
    "agent.resumed",
)


def notify(*, event: str, key: str, payload: dict[str, Any]) -> list[int]:
    """Queue one notice of ``event`` per interested endpoint; a repeated ``key`` adds nothing."""
    assert event in EVENTS, event
    created = []
    now = timezone.now()
    for endpoint in WebhookEndpoint.objects.filter(enabled=True):
        if not endpoint.wants(event):
            continue
        delivery, new = WebhookDelivery.objects.get_or_create(
            endpoint=endpoint,
            event_key=key,
            defaults={"event": event, "payload": payload, "next_attempt_at": now},
        )
        if new:
            created.append(delivery.pk)
    if created and not settings.OPSCONSOLE_EMBEDDED_SCHEDULER:
        for delivery_id in created:
            transaction.on_commit(
                lambda delivery_id=delivery_id: deliver_webhook.delay(delivery_id)
            )
    return created


# --- endpoints, as admins manage them from the console ------------------------------------------
