"""The append-only audit log: every human and policy action goes through ``audit_record``."""

from __future__ import annotations

from typing import Any

from opsconsole.models import AuditEntry


def actor_name(user) -> str:
    if user is None:
        return "system"
    return f"user:{user.get_username()}"


def audit_record(
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: Any = "",
    reason: str = "",
    before: Any = None,
    after: Any = None,
) -> AuditEntry:
    """Insert one audit row inside the caller's transaction: no audit row, no change."""
    return AuditEntry.objects.create(
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        reason=reason,
        before=before,
        after=after,
    )
