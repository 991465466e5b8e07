"""Bearer authentication for both agents (``aok_...`` keys) and people (``aou_...`` tokens)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from opsconsole import keys, roles

# last_used_at is refreshed at most this often, so authentication stays a read.
_TOUCH_EVERY = timedelta(seconds=60)


def authenticate_bearer(header: str):
    """Returns (principal, key row) for a valid key, or raises AuthenticationFailed."""
    from agents.models import AgentKey
    from opsconsole.models import UserToken

    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <key>'.")
    hashed = keys.digest(raw)
    now = timezone.now()
    if raw.startswith(keys.AGENT_KEY_PREFIX):
        row = AgentKey.objects.select_related("agent").filter(key_hash=hashed).first()
        if row is None or row.revoked_at is not None:
            raise exceptions.AuthenticationFailed("Unknown or revoked key.")
        if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
            AgentKey.objects.filter(pk=row.pk).update(last_used_at=now)
            type(row.agent).objects.filter(pk=row.agent_id).update(last_used_at=now)
        return row.agent, row
    if raw.startswith(keys.USER_TOKEN_PREFIX):
        row = UserToken.objects.select_related("user").filter(key_hash=hashed).first()
        if row is None or row.revoked_at is not None or not row.user.is_active:
            raise exceptions.AuthenticationFailed("Unknown or revoked token.")
        if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
            UserToken.objects.filter(pk=row.pk).update(last_used_at=now)
        return row.user, row
    raise exceptions.AuthenticationFailed("Unknown or revoked key.")


class BearerKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        return authenticate_bearer(header)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


def is_agent(principal) -> bool:
    from agents.models import Agent

    return isinstance(principal, Agent)


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
