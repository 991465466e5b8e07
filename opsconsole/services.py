"""The kill switch and per-user API tokens."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from opsconsole import keys
from opsconsole.audit import audit_record
from opsconsole.errors import Invalid
from opsconsole.live import broadcast, group_for
from opsconsole.models import KillSwitch, KillSwitchMode, UserToken
from opsconsole.notifications import notify


def kill_switch_set(*, mode: str, reason: str, actor: str) -> KillSwitch:
    """Change the global kill switch. Turning it on needs a reason; it is audited.

    It takes effect on the very next gateway decision in every worker (the row is read per
    decision); ``stop_all`` also stops every running run now, through a background task.
    """
    if mode not in KillSwitchMode.values:
        raise Invalid(
            f"mode must be one of {', '.join(KillSwitchMode.values)}.", code="invalid_mode"
        )
    reason = (reason or "").strip()
    if mode != KillSwitchMode.OFF and not reason:
        raise Invalid("A reason is required to turn the kill switch on.", code="reason_required")
    with transaction.atomic():
        switch, _ = KillSwitch.objects.select_for_update().get_or_create(pk=1)
        before = {"mode": switch.mode, "reason": switch.reason, "set_by": switch.set_by}
        switch.mode = mode
        switch.reason = reason
        switch.set_by = actor
        switch.set_at = timezone.now()
        switch.save()
        entry = audit_record(
            actor=actor,
            action="kill_switch.set",
            target_type="kill_switch",
            target_id=1,
            reason=reason,
            before=before,
            after={"mode": mode, "reason": reason, "set_by": actor},
        )
        broadcast(
            [group_for("killswitch")],
            "killswitch.changed",
            {"mode": mode, "reason": reason, "set_by": actor, "set_at": switch.set_at.isoformat()},
        )
        notify(
            event="kill_switch.changed",
            key=f"kill_switch:{entry.pk}",
            payload={"mode": mode, "reason": reason, "set_by": actor, "previous": before["mode"]},
        )
        if mode == KillSwitchMode.STOP_ALL:
            from agents.tasks import kill_switch_sweep

            transaction.on_commit(kill_switch_sweep.delay)
    return switch


def user_token_issue(*, user, actor: str, label: str = "") -> tuple[UserToken, str]:
    raw = keys.generate(keys.USER_TOKEN_PREFIX)
    with transaction.atomic():
        token = UserToken.objects.create(
            user=user, label=label, prefix=keys.display_prefix(raw), key_hash=keys.digest(raw)
        )
        audit_record(
            actor=actor,
            action="user_token.issue",
            target_type="user",
            target_id=user.get_username(),
            after={"token": token.prefix, "label": label},
        )
    return token, raw
