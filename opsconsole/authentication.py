"""Bearer authentication for both agents (``aok_...`` keys) and people (``aou_...`` tokens).

Which rows hold which credentials is wiring (``OPSCONSOLE_BEARER_KEYS`` in settings: a key's
prefix names the model holding its hash), so this lower layer knows no app's models.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import models
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from opsconsole import keys, roles

# last_used_at is refreshed at most this often, so authentication stays a read.
_TOUCH_EVERY = timedelta(seconds=60)


@cache
def _key_models() -> dict[str, tuple[type[models.Model], str]]:
    """prefix -> (model with key_hash, revoked_at and last_used_at; its owner's field)."""
    result = {}
    for prefix, (label, owner) in settings.OPSCONSOLE_BEARER_KEYS.items():
        result[prefix] = (apps.get_model(label), owner)
    return result


def authenticate_bearer(header: str) -> tuple[Any, Any]:
    """Returns (principal, key row) for a valid key, or raises AuthenticationFailed."""
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <key>'.")
    kind = next((kind for prefix, kind in _key_models().items() if raw.startswith(prefix)), None)
    if kind is None:
        raise exceptions.AuthenticationFailed("Unknown or revoked key.")
    model, owner = kind
    row: Any = model.objects.select_related(owner).filter(key_hash=keys.digest(raw)).first()
    principal = getattr(row, owner, None)
    if row is None or row.revoked_at is not None or not getattr(principal, "is_active", True):
        raise exceptions.AuthenticationFailed("Unknown or revoked key.")
    now = timezone.now()
    if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
        model.objects.filter(pk=row.pk).update(last_used_at=now)
        if hasattr(principal, "last_used_at"):
            type(principal).objects.filter(pk=principal.pk).update(last_used_at=now)
    return principal, row


class BearerKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        return authenticate_bearer(header)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


def is_agent(principal: Any) -> bool:
    """Agents authenticate as themselves (their model says ``is_agent = True``), not as users."""
    return getattr(principal, "is_agent", False) is True


class IsAgent(permissions.BasePermission):
    message = "This endpoint is for agents; use an agent key."

    def has_permission(self, request, view) -> bool:
        return is_agent(request.user)


class _HasRole(permissions.BasePermission):
    role = roles.ONCALL

    def has_permission(self, request, view) -> bool:
        if is_agent(request.user):
            return False
        self.message = f"This needs the {self.role} role."
        return roles.has_role(request.user, self.role)


class IsOncall(_HasRole):
    role = roles.ONCALL


class IsReviewer(_HasRole):
    role = roles.REVIEWER


class IsAdmin(_HasRole):
    role = roles.ADMIN
