"""Writes on policy: publish, amend and restore versions, and set the kill switch.

A published version governs the very next gateway decision in every worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents.gateway.tasks import kill_switch_sweep
from agents.models import (
    Agent,
    AgentMode,
    KillSwitch,
    KillSwitchMode,
    PolicyVersion,
)
from agents.policy.document import PolicyError, normalise
from agents.policy.selectors import policy_current
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, Invalid, NotFound
from opsconsole.live import broadcast, group_for
from opsconsole.notifications import notify


def policy_publish(
    *,
    document: dict[str, Any],
    author: str,
    reason: str,
    restored_from: int | None = None,
    based_on: int | None = None,
) -> PolicyVersion:
    """Validate and save a new policy version; it governs the very next gateway decision.

    ``based_on`` is the version an editor started from: if another version was published since,
    the save is refused (409 ``policy_changed``) instead of silently undoing that change.
    """
    try:
        normalised = normalise(document)
    except PolicyError as exc:
        raise Invalid(exc.errors, code="invalid_policy") from None
    with transaction.atomic():
        latest = PolicyVersion.objects.select_for_update().order_by("-number").first()
        if based_on is not None and latest is not None and latest.number != based_on:
            raise Conflict(
                f"Policy v{latest.number} was published by {latest.author} "
                f"({latest.reason or 'no reason given'}) while you were editing v{based_on}. "
                "Your changes were not saved; check them against the current version and save "
                "again.",
                code="policy_changed",
            )
        number = (latest.number + 1) if latest else 1
        version = PolicyVersion.objects.create(
            number=number,
            document=normalised,
            author=author,
            reason=reason,
            restored_from=restored_from,
        )
        # Before the audit rows: the audit chain's head is always locked last.
        _agent_modes_follow(normalised, author=author, reason=reason, number=number)
        audit_record(
            actor=author,
            action="policy.publish",
            target_type="policy",
            target_id=number,
            reason=reason,
            before=latest.document if latest else None,
            after=normalised,
        )
        # Open policy pages say a new version is in force (editors keep their drafts).
        broadcast(
            [group_for("policy")],
            "policy.changed",
            {"version": number, "author": author, "reason": reason},
        )
    return version


def _agent_modes_follow(document: dict[str, Any], *, author: str, reason: str, number: int) -> None:
    """Each agent's row takes the mode the new version gives it (observe or enforce), in the
    publishing transaction, so the gateway reads it with the agent; each switch is audited."""
    observed = [
        name for name, rule in document["agents"].items() if rule.get("mode") == AgentMode.OBSERVE
    ]
    switching = Agent.objects.select_for_update().filter(
        Q(name__in=observed) & ~Q(mode=AgentMode.OBSERVE)
        | ~Q(name__in=observed) & Q(mode=AgentMode.OBSERVE)
    )
    for agent in switching:
        before = agent.mode
        agent.mode = AgentMode.OBSERVE if agent.name in observed else AgentMode.ENFORCE
        agent.save(update_fields=["mode"])
        audit_record(
            actor=author,
            action="agent.mode",
            target_type="agent",
            target_id=agent.name,
            reason=reason,
            before={"mode": before},
            after={"mode": agent.mode, "policy_version": number},
        )
        broadcast([group_for("agents")], "agents.changed", {"name": agent.name})


def policy_amend(
    *,
    change: Callable[[dict[str, Any]], bool],
    author: str,
    reason: str,
    attempts: int = 3,
) -> PolicyVersion | None:
    """A programmatic change to the current policy (a rule, a new agent's allowlist).

    ``change`` edits a copy of the current document in place and returns False when there is
    nothing to do (then nothing is published). Published ``based_on`` the version it read, so a
    version someone published in between is never undone: the change is applied again on top of
    it (``attempts`` times at most).
    """
    for attempt in range(1, attempts + 1):
        current = policy_current()
        document = json.loads(json.dumps(current.document))
        if not change(document):
            return None
        try:
            return policy_publish(
                document=document, author=author, reason=reason, based_on=current.version
            )
        except Conflict as error:
            if error.code != "policy_changed" or attempt == attempts:
                raise
    return None


def policy_restore(*, number: int, author: str, reason: str) -> PolicyVersion:
    old = PolicyVersion.objects.filter(number=number).first()
    if old is None:
        raise NotFound(f"No policy version {number}.")
    return policy_publish(
        document=old.document,
        author=author,
        reason=reason or f"restore v{number}",
        restored_from=number,
    )


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
            transaction.on_commit(kill_switch_sweep.delay)
    return switch
