"""The three roles of SPEC.md, as Django groups; each includes the ones before it."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group

ONCALL = "oncall"
REVIEWER = "reviewer"
ADMIN = "admin"
ROLES = (ONCALL, REVIEWER, ADMIN)
_RANK = {ONCALL: 1, REVIEWER: 2, ADMIN: 3}


def rank(user: AbstractBaseUser | AnonymousUser | None) -> int:
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return 0
    if user.is_superuser:
        return _RANK[ADMIN]
    cached = getattr(user, "_opsconsole_rank", None)
    if cached is None:
        names = set(user.groups.values_list("name", flat=True))
        cached = max((_RANK[name] for name in names if name in _RANK), default=0)
        user._opsconsole_rank = cached
    return cached


def has_role(user, role: str) -> bool:
    """on-call < reviewer < admin: a reviewer may do what on-call may, and so on."""
    return rank(user) >= _RANK[role]


def role_of(user) -> str | None:
    level = rank(user)
    return next((name for name, value in _RANK.items() if value == level), None)


def ensure_groups() -> None:
    for name in ROLES:
        Group.objects.get_or_create(name=name)
