"""Writes on agents and their keys: create, enable or disable, issue and revoke keys. Audited,
and open agents pages refresh (``agents.changed``)."""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents.models import (
    Agent,
    AgentKey,
    AgentMode,
)
from agents.policy.selectors import policy_current
from agents.policy.services import policy_amend
from opsconsole import keys
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, Invalid, NotFound
from opsconsole.live import broadcast, group_for
from opsconsole.notifications import notify

AGENT_NAME = re.compile(r"[-a-zA-Z0-9_]{1,100}")


def _broadcast_agent(name: str) -> None:
    """Open agents pages refresh their table (after commit; see opsconsole/live.py)."""
    broadcast([group_for("agents")], "agents.changed", {"name": name})


def agent_create(
    *, name: str, actor: str, description: str = "", tools: list[str] | None = None
) -> Agent:
    """Create an agent; ``tools`` (if given) becomes its own allowlist in a new policy version."""
    if not AGENT_NAME.fullmatch(name or ""):
        raise Invalid(
            "An agent name is 1-100 letters, digits, '-' or '_' (e.g. support-bot).",
            code="invalid_name",
        )
    with transaction.atomic():
        if Agent.objects.filter(name=name).exists():
            raise Conflict(f"An agent named {name!r} already exists.", code="agent_exists")
        # A policy may name the agent before it exists: its mode is the policy's from the start.
        mode = policy_current().mode_for(name)
        agent = Agent.objects.create(name=name, description=description, mode=mode)
        audit_record(
            actor=actor,
            action="agent.create",
            target_type="agent",
            target_id=name,
            after={"name": name},
        )
        _broadcast_agent(name)
        if tools:

            def add_allowlist(document: dict[str, Any]) -> bool:
                document["agents"][name] = {
                    "allow": sorted(set(tools)),
                    "budgets": {},
                    "mode": mode,
                }
                return True

            policy_amend(
                change=add_allowlist, author=actor, reason=f"allowlist for new agent {name}"
            )
    return agent


def agent_mode_set(*, agent: Agent, mode: str, actor: str, reason: str = "") -> Agent:
    """Switch an agent between ``enforce`` and ``observe`` (admins): a new policy version with
    the agent's ``mode``, which the agent's row follows in the same transaction (audited there as
    ``agent.mode``, with the version). Observe mode lets every call through, so it needs a
    reason. Setting the mode it already has publishes nothing."""
    if mode not in AgentMode.values:
        raise Invalid(f"mode must be one of {', '.join(AgentMode.values)}.", code="invalid_mode")
    reason = reason.strip()
    if mode == AgentMode.OBSERVE and not reason:
        raise Invalid(
            "Say why the agent is observed: its calls are allowed whatever the policy says.",
            code="reason_required",
        )
    name = agent.name

    def set_mode(document: dict[str, Any]) -> bool:
        entry = document["agents"].setdefault(name, {"allow": None, "budgets": {}})
        if entry.get("mode", AgentMode.ENFORCE) == mode:
            return False
        entry["mode"] = mode
        return True

    policy_amend(change=set_mode, author=actor, reason=reason or f"{name}: {mode} mode")
    return Agent.objects.get(pk=agent.pk)


def agent_key_issue(*, agent: Agent, actor: str, label: str = "") -> tuple[AgentKey, str]:
    """Returns the key row and the raw key, which is never stored and never shown again."""
    key = keys.new_key(keys.AGENT_KEY_PREFIX)
    with transaction.atomic():
        row = AgentKey.objects.create(
            agent=agent, label=label, prefix=key.prefix, key_hash=key.key_hash
        )
        audit_record(
            actor=actor,
            action="agent_key.issue",
            target_type="agent",
            target_id=agent.name,
            after={"key": row.prefix, "label": label},
        )
        _broadcast_agent(agent.name)
    return row, key.raw


def agent_key_revoke(*, key_id: int, actor: str) -> AgentKey:
    with transaction.atomic():
        row = AgentKey.objects.select_for_update().select_related("agent").filter(pk=key_id).first()
        if row is None:
            raise NotFound(f"No key {key_id}.")
        if row.revoked_at is None:
            row.revoked_at = timezone.now()
            row.save(update_fields=["revoked_at"])
            audit_record(
                actor=actor,
                action="agent_key.revoke",
                target_type="agent",
                target_id=row.agent.name,
                before={"key": row.prefix},
                after={"key": row.prefix, "revoked": True},
            )
            _broadcast_agent(row.agent.name)
    return row


def agent_set_enabled(*, agent: Agent, enabled: bool, actor: str, reason: str = "") -> Agent:
    """Per-agent kill: a disabled agent's runs stop with ``agent_disabled`` at their next call."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if agent.enabled == enabled:
            return agent
        before = {"enabled": agent.enabled}
        agent.enabled = enabled
        agent.paused = False
        agent.disabled_reason = "" if enabled else reason
        agent.disabled_by = "" if enabled else actor.removeprefix("user:")
        agent.disabled_at = None if enabled else timezone.now()
        agent.save(
            update_fields=["enabled", "paused", "disabled_reason", "disabled_by", "disabled_at"]
        )
        audit_record(
            actor=actor,
            action="agent.enable" if enabled else "agent.disable",
            target_type="agent",
            target_id=agent.name,
            reason=reason,
            before=before,
            after={"enabled": enabled},
        )
        _broadcast_agent(agent.name)
    return agent


def agent_pause(*, agent: Agent, actor: str, by: str, reason: str) -> Agent:
    """Contain an agent now (on-call and up): it is disabled with ``by`` and ``reason``, so its
    runs stop with ``agent_disabled`` at their next call ("paused by <by>: <reason>") and new runs
    are refused. Audited and sent to webhooks (``agent.paused``); pausing a disabled agent is a
    no-op, so a double click or a second person changes nothing."""
    reason = reason.strip()
    if not reason:
        raise Invalid("Say why the agent is paused; its runs will stop.", code="reason_required")
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if not agent.enabled:
            return agent
        now = timezone.now()
        agent.enabled, agent.paused = False, True
        agent.disabled_reason, agent.disabled_by, agent.disabled_at = reason, by, now
        agent.save(
            update_fields=["enabled", "paused", "disabled_reason", "disabled_by", "disabled_at"]
        )
        audit_record(
            actor=actor,
            action="agent.pause",
            target_type="agent",
            target_id=agent.name,
            reason=reason,
            before={"enabled": True},
            after={"enabled": False, "paused": True},
        )
        notify(
            event="agent.paused",
            key=f"agent.paused:{agent.pk}:{now.isoformat()}",
            payload={"agent": agent.name, "by": by, "reason": reason, "at": now.isoformat()},
        )
        _broadcast_agent(agent.name)
        # Every console page follows the killswitch group: its paused-agents banner refreshes.
        broadcast(
            [group_for("killswitch")], "agents.paused_changed", {"name": agent.name, "paused": True}
        )
    return agent


def agent_resume(*, agent: Agent, actor: str, by: str) -> Agent:
    """Lift a pause (on-call and up). Only a paused agent resumes: an agent an admin disabled
    stays disabled until an admin enables it."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if not agent.paused:
            return agent
        before = {"enabled": False, "paused": True, "reason": agent.disabled_reason}
        agent.enabled, agent.paused = True, False
        agent.disabled_reason, agent.disabled_by, agent.disabled_at = "", "", None
        agent.save(
            update_fields=["enabled", "paused", "disabled_reason", "disabled_by", "disabled_at"]
        )
        audit_record(
            actor=actor,
            action="agent.resume",
            target_type="agent",
            target_id=agent.name,
            before=before,
            after={"enabled": True, "paused": False},
        )
        now = timezone.now()
        notify(
            event="agent.resumed",
            key=f"agent.resumed:{agent.pk}:{now.isoformat()}",
            payload={"agent": agent.name, "by": by, "at": now.isoformat()},
        )
        _broadcast_agent(agent.name)
        broadcast(
            [group_for("killswitch")],
            "agents.paused_changed",
            {"name": agent.name, "paused": False},
        )
    return agent
