"""Sending webhooks: each delivery row is claimed, signed, posted and retried with backoff.

Called by the Celery tasks in opsconsole/tasks.py (or the embedded scheduler); the rows are
written by ``notify`` (opsconsole/notifications.py) inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from opsconsole.models import DeliveryStatus, WebhookDelivery, WebhookFormat

MAX_ATTEMPTS = 8

logger = logging.getLogger("opsconsole.notifications")


CLAIM_SECONDS = 60


def summary(event: str, payload: dict[str, Any]) -> str:
    if event == "approval.requested":
        return f"Approval needed: {payload.get('agent')} wants {payload.get('tool')} (run {payload.get('run')})"
    if event == "approval.expiring":
        return f"Approval about to expire: {payload.get('tool')} for {payload.get('agent')} (request {payload.get('id')})"
    if event == "kill_switch.changed":
        return f"Kill switch is now {payload.get('mode')} (set by {payload.get('set_by')}: {payload.get('reason')})"
    if event == "drift.alert":
        return f"Drift: {payload.get('metric')} of {payload.get('agent') or 'every agent'} is {payload.get('value')} (baseline {payload.get('baseline_mean')}; rule {payload.get('rule')}) {payload.get('action_taken') or ''}".strip()
    if event == "budget.crossed_80":
        return f"Run {payload.get('run')} of {payload.get('agent')} passed 80% of {payload.get('budget')}"
    return event


def body_for(delivery: WebhookDelivery) -> bytes:
    if delivery.endpoint.format == WebhookFormat.SLACK:
        body: dict[str, Any] = {"text": summary(delivery.event, delivery.payload)}
    else:
        body = {
            "id": delivery.pk,
            "event": delivery.event,
            "key": delivery.event_key,
            "created_at": delivery.created_at.isoformat(),
            "data": delivery.payload,
        }
    return json.dumps(body, sort_keys=True, default=str).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _claim(delivery_id: int) -> bool:
    """Claim a due delivery (conditional UPDATE): two workers never send the same one at once;
    a claim left by a killed worker lapses after CLAIM_SECONDS and the delivery is retried."""
    now = timezone.now()
    return bool(
        WebhookDelivery.objects.filter(pk=delivery_id)
        .filter(
            Q(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
            | Q(status=DeliveryStatus.SENDING, claimed_until__lt=now)
        )
        .update(status=DeliveryStatus.SENDING, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
    )


def webhook_deliver(*, delivery_id: int) -> str:
    """Try one delivery once. Returns its status afterwards."""
    if not _claim(delivery_id):
        return (
            WebhookDelivery.objects.filter(pk=delivery_id).values_list("status", flat=True).first()
            or "missing"
        )
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    body = body_for(delivery)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "agent-ops-console-webhooks",
        "X-Opsconsole-Event": delivery.event,
        "X-Opsconsole-Delivery": str(delivery.pk),
        "X-Opsconsole-Signature": signature(delivery.endpoint.secret, timestamp, body),
    }
    error = ""
    try:
        response = httpx.post(delivery.endpoint.url, content=body, headers=headers, timeout=5.0)
        if response.status_code >= 300:
            error = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    attempts = delivery.attempts + 1
    now = timezone.now()
    if not error:
        update = {"status": DeliveryStatus.DELIVERED, "delivered_at": now, "last_error": ""}
    elif attempts >= MAX_ATTEMPTS:
        update = {"status": DeliveryStatus.FAILED, "last_error": error}
        logger.warning(
            "webhook %s to %s failed for good: %s", delivery.pk, delivery.endpoint, error
        )
    else:
        backoff = min(settings.OPSCONSOLE_WEBHOOK_BACKOFF_SECONDS * 2 ** (attempts - 1), 600)
        update = {
            "status": DeliveryStatus.PENDING,
            "last_error": error,
            "next_attempt_at": now + timedelta(seconds=backoff),
        }
    WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING).update(
        attempts=attempts, claimed_until=None, **update
    )
    return update["status"]


def webhooks_deliver_due(*, limit: int = 100) -> int:
    """Send every due delivery (and retry lapsed claims); returns how many were attempted."""
    now = timezone.now()
    due = WebhookDelivery.objects.filter(
        Q(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
        | Q(status=DeliveryStatus.SENDING, claimed_until__lt=now)
    ).order_by("next_attempt_at")
    ids = list(due.values_list("pk", flat=True)[:limit])
    for delivery_id in ids:
        webhook_deliver(delivery_id=delivery_id)
    return len(ids)
