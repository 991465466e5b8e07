"""Cross-cutting records: the kill switch, the audit log and per-user API tokens."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditEntry(models.Model):
    """One human or policy action. Rows are only ever inserted (see opsconsole/audit.py).

    The log is hash-chained: ``hash`` covers the row's content and ``prev_hash``, the hash of the
    row before it, so changing, removing or reordering a row breaks the chain from there on
    (``manage.py verify_audit`` finds it). Database triggers refuse UPDATE (and DELETE on
    PostgreSQL; see migration 0004).
    """

    # Set before insert (not auto_now_add) because the hash covers it.
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, help_text="user:<name>, agent:<name> or system")
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64)
    # Agent names are up to 100 characters, tool names up to 128.
    target_id = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target_idx")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action}"


class AuditChainHead(models.Model):
    """The end of the audit chain (a single row, id 1). Appending locks it, so concurrent
    appends queue instead of forking the chain; ``length`` lets a removed last row be noticed."""

    last_hash = models.CharField(max_length=64, blank=True)
    last_entry_id = models.BigIntegerField(null=True, blank=True)
    length = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"audit chain head: {self.length} rows"


class UserToken(models.Model):
    """A person's API token for the reviewer and operator API; stored hashed, shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class WebhookFormat(models.TextChoices):
    GENERIC = "generic", "Generic JSON"
    SLACK = "slack", "Slack-compatible"


class WebhookEndpoint(models.Model):
    """Where notifications go. ``events`` empty means every event."""

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=200, help_text="HMAC-SHA256 key for the signature header")
    format = models.CharField(
        max_length=16, choices=WebhookFormat.choices, default=WebhookFormat.GENERIC
    )
    events = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One notice to one endpoint. ``event_key`` makes it one notice per event, however often
    the event is noticed; retries reuse the row (and its id, sent so receivers can dedupe)."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.CharField(max_length=64)
    event_key = models.CharField(max_length=200)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(db_index=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event_key"], name="one_delivery_per_event"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.endpoint} ({self.status})"


class SweepHeartbeat(models.Model):
    """When a periodic sweep last completed, one row per task name (see opsconsole/health.py).

    Kept in the database, not the cache: in production the cache is Redis, the very thing whose
    outage these rows are there to reveal.
    """

    name = models.CharField(max_length=100, unique=True)
    last_ok_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} last ran {self.last_ok_at:%Y-%m-%d %H:%M:%S}"
