"""Reads for the cross-cutting pages."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q

from opsconsole.models import (
    AuditEntry,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from opsconsole.pagination import keyset_page


def audit_page(
    *,
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> tuple[list[AuditEntry], int | None]:
    """Audit entries newest first (keyset on id), and the ``before`` of the next page."""
    entries = AuditEntry.objects.order_by("-id")
    if action:
        entries = entries.filter(action__startswith=action)
    if actor:
        entries = entries.filter(actor__icontains=actor)
    if target_type:
        entries = entries.filter(target_type=target_type)
    if target_id:
        entries = entries.filter(target_id=target_id)
    if before is not None:
        entries = entries.filter(id__lt=before)
    return keyset_page(entries, limit=limit, cursor_of=lambda entry: entry.pk)


def webhook_overview(*, limit: int = 100) -> dict[str, Any]:
    """The webhooks page: endpoints, the latest deliveries, and failure counts."""
    endpoints = list(
        WebhookEndpoint.objects.annotate(
            failed=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.FAILED)),
            pending=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.PENDING)),
        ).order_by("name")
    )
    deliveries = list(WebhookDelivery.objects.select_related("endpoint").order_by("-id")[:limit])
    return {"endpoints": endpoints, "deliveries": deliveries}
