"""People, their API tokens, and webhook endpoints as admins manage them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from opsconsole import keys, roles, webhooks
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, Invalid, NotFound
from opsconsole.models import (
    DeliveryStatus,
    UserToken,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookFormat,
)
from opsconsole.notifications import EVENTS


def user_token_issue(*, user, actor: str, label: str = "") -> tuple[UserToken, str]:
    key = keys.new_key(keys.USER_TOKEN_PREFIX)
    with transaction.atomic():
        token = UserToken.objects.create(
            user=user, label=label, prefix=key.prefix, key_hash=key.key_hash
        )
        audit_record(
            actor=actor,
            action="user_token.issue",
            target_type="user",
            target_id=user.get_username(),
            after={"token": token.prefix, "label": label},
        )
    return token, key.raw


@dataclass
class Credentials:
    """What a new or reset person receives once: only hashes are kept."""

    user: Any
    password: str
    token: str
    created: bool
    tokens_revoked: int


def user_set_role(*, user, role: str) -> None:
    """One role group per person; the roles nest, so the highest one is all they need."""
    roles.ensure_groups()
    user.groups.remove(*Group.objects.filter(name__in=roles.ROLES))
    user.groups.add(Group.objects.get(name=role))
    user.__dict__.pop("_opsconsole_rank", None)


def user_create(
    *, username: str, role: str, actor: str, email: str = "", reset: bool = False
) -> Credentials:
    """Create a person in a role with a generated password and an API token.

    With ``reset`` the person must exist: new password, new token (earlier tokens revoked), role.
    """
    if role not in roles.ROLES:
        raise Invalid(f"role must be one of {', '.join(roles.ROLES)}.", code="invalid_role")
    user_model = get_user_model()
    try:
        user_model.username_validator(username)
    except ValidationError as exc:
        raise Invalid(
            f"{username!r} is not a valid username: {' '.join(exc.messages)}", code="invalid_user"
        ) from None
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise Invalid(
                f"{email!r} is not a valid email address.", code="invalid_email"
            ) from None
    password = secrets.token_urlsafe(24)
    with transaction.atomic():
        user = user_model.objects.select_for_update().filter(username=username).first()
        if user is None and reset:
            raise NotFound(f"There is no user {username!r} to reset.", code="no_such_user")
        if user is not None and not reset:
            raise Conflict(f"A user named {username!r} already exists.", code="user_exists")
        revoked = 0
        if user is None:
            user = user_model.objects.create_user(username=username, email=email, password=password)
            before = None
        else:
            before = {"role": roles.role_of(user), "email": user.email}
            user.set_password(password)
            if email:
                user.email = email
            user.save()
            revoked = UserToken.objects.filter(user=user, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
        user_set_role(user=user, role=role)
        audit_record(
            actor=actor,
            action="user.reset" if reset else "user.create",
            target_type="user",
            target_id=username,
            before=before,
            after={"role": role, "email": user.email, "tokens_revoked": revoked},
        )
        _, raw_token = user_token_issue(user=user, actor=actor, label="cli")
    return Credentials(
        user=user, password=password, token=raw_token, created=not reset, tokens_revoked=revoked
    )


def webhook_endpoint_create(
    *, name: str, url: str, secret: str, format: str, events: list[str], actor: str
) -> WebhookEndpoint:

    unknown = sorted(set(events) - set(EVENTS))
    if unknown:
        raise Invalid(f"unknown events: {', '.join(unknown)}", code="invalid_events")
    if format not in WebhookFormat.values:
        raise Invalid(
            f"format must be one of {', '.join(WebhookFormat.values)}", code="invalid_format"
        )
    if refusal := webhooks.destination_refusal(url):
        raise Invalid(refusal, code="destination_refused")
    with transaction.atomic():
        if WebhookEndpoint.objects.filter(name=name).exists():
            raise Conflict(f"An endpoint named {name!r} already exists.", code="endpoint_exists")
        endpoint = WebhookEndpoint.objects.create(
            name=name, url=url, secret=secret, format=format, events=sorted(events)
        )
        audit_record(
            actor=actor,
            action="webhook.create",
            target_type="webhook",
            target_id=name,
            after={"url": url, "format": format, "events": endpoint.events},
        )
    return endpoint


def webhook_endpoint_set_enabled(*, endpoint_id: int, enabled: bool, actor: str) -> WebhookEndpoint:

    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_id).first()
        if endpoint is None:
            raise NotFound(f"No webhook endpoint {endpoint_id}.")
        if endpoint.enabled != enabled:
            endpoint.enabled = enabled
            endpoint.save(update_fields=["enabled"])
            audit_record(
                actor=actor,
                action="webhook.enable" if enabled else "webhook.disable",
                target_type="webhook",
                target_id=endpoint.name,
                before={"enabled": not enabled},
                after={"enabled": enabled},
            )
    return endpoint


def webhook_delivery_retry(*, delivery_id: int, actor: str) -> bool:
    """Send a failed delivery again (same id, so receivers still deduplicate)."""

    with transaction.atomic():
        retried = WebhookDelivery.objects.filter(
            pk=delivery_id, status=DeliveryStatus.FAILED
        ).update(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=timezone.now())
        if retried:
            audit_record(
                actor=actor,
                action="webhook.retry",
                target_type="webhook_delivery",
                target_id=delivery_id,
                before={"status": "failed"},
                after={"status": "pending"},
            )
    return bool(retried)
