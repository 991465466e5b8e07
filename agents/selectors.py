"""Reads for the gateway, pages and APIs."""

from __future__ import annotations

from django.db.models import QuerySet

from agents.models import Agent, PolicyVersion, Run, ToolCall
from agents.policy import Policy
from opsconsole.errors import NotFound
from opsconsole.models import KillSwitch, KillSwitchMode

# Parsed policies by (number, created_at): a number alone could be reused after a restore of
# the database, the pair cannot.
_policy_cache: dict[tuple, Policy] = {}


def policy_current() -> Policy:
    """The policy in force now. A change made by any worker is seen on the next call."""
    latest = PolicyVersion.objects.order_by("-number").values_list("number", "created_at").first()
    if latest is None:
        raise NotFound("No policy has been loaded; run 'manage.py migrate'.", code="no_policy")
    policy = _policy_cache.get(latest)
    if policy is None:
        document = PolicyVersion.objects.values_list("document", flat=True).get(number=latest[0])
        policy = Policy(latest[0], document)
        if len(_policy_cache) > 64:
            _policy_cache.clear()
        _policy_cache[latest] = policy
    return policy


def kill_switch_current() -> KillSwitch:
    return KillSwitch.objects.filter(pk=1).first() or KillSwitch(pk=1, mode=KillSwitchMode.OFF)


def run_get_for_agent(*, agent: Agent, run_id: int) -> Run:
    """An agent sees only its own runs: another agent's run is a 404."""
    run = Run.objects.select_related("agent").filter(pk=run_id, agent=agent).first()
    if run is None:
        raise NotFound(f"No run {run_id} for this agent.")
    return run


def tool_call_get_for_agent(*, agent: Agent, tool_call_id: int) -> ToolCall:
    tool_call = (
        ToolCall.objects.select_related("run", "run__agent", "approval")
        .filter(pk=tool_call_id, run__agent=agent)
        .first()
    )
    if tool_call is None:
        raise NotFound(f"No tool call {tool_call_id} for this agent.")
    return tool_call


def run_list(*, agent: str | None = None, status: str | None = None) -> QuerySet[Run]:
    runs = Run.objects.select_related("agent").order_by("-started_at", "-id")
    if agent:
        runs = runs.filter(agent__name=agent)
    if status:
        runs = runs.filter(status=status)
    return runs
