"""The gateway's checks as pure functions: one place for the policy logic of a decision.

``agents.gateway.services`` calls these with a locked run and closures that query the database;
``agents.monitoring.replay`` calls them with counters rebuilt from a recording and closures that count
the replayed calls. Neither copies a check, so a replay decides what the gateway would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from agents import stop_reasons
from agents.models import Decision, KillSwitchMode
from agents.policy.document import Policy, ToolRule, schema_errors


class RunCounters(Protocol):
    """What a decision reads of a run: its budgets and usage so far (a Run is one)."""

    max_steps: int | None
    max_seconds: int | None
    max_tool_calls: int | None
    max_usd: Decimal | None
    max_tokens: int | None
    steps: int
    tool_calls: int
    tokens: int
    usd: Decimal

    @property
    def seconds(self) -> float: ...


@dataclass(frozen=True)
class Verdict:
    """A tool call's decision; ``stop_reason`` and ``detail`` are set when it stops."""

    decision: str
    stop_reason: str | None
    detail: str
    rule: ToolRule


def tool_call_verdict(
    *,
    policy: Policy,
    tool: str,
    args: dict[str, Any],
    agent_name: str,
    agent_enabled: bool,
    kill_mode: str,
    run: RunCounters,
    repeats: Callable[[], int],
    calls_of_tool: Callable[[], int],
    degraded: Callable[[ToolRule], bool],
) -> Verdict:
    """Decide one tool call in SPEC.md's order (the run is known to be active).

    ``repeats`` (counted calls with the same tool and arguments), ``calls_of_tool`` (counted
    calls of the tool) and ``degraded`` (the breaker refuses the call) are called only when
    the checks before them passed, so the gateway pays their queries only then.
    """
    rule = policy.tool_rule_for(tool, agent_name)
    reason: str | None = None
    detail = ""
    if kill_mode == KillSwitchMode.STOP_ALL:
        reason, detail = stop_reasons.KILL_SWITCH, "kill switch: stop_all"
    elif not agent_enabled:
        reason = stop_reasons.AGENT_DISABLED
    elif kill_mode == KillSwitchMode.DISABLE_WRITES and rule.effect == "write":
        reason, detail = (
            stop_reasons.KILL_SWITCH,
            f"kill switch: writes are disabled ({tool} is a write)",
        )
    elif kill_mode == KillSwitchMode.DISABLE_EXPENSIVE and rule.expensive:
        reason, detail = (
            stop_reasons.KILL_SWITCH,
            f"kill switch: expensive tools are disabled ({tool})",
        )
    elif run.max_seconds is not None and run.seconds > run.max_seconds:
        reason = stop_reasons.MAX_SECONDS
    elif run.max_tool_calls is not None and run.tool_calls + 1 > run.max_tool_calls:
        reason, detail = (
            stop_reasons.MAX_TOOL_CALLS,
            f"call {run.tool_calls + 1} of {run.max_tool_calls}",
        )
    elif not policy.is_allowed(tool, agent_name):
        reason, detail = (
            stop_reasons.for_tool(stop_reasons.TOOL_DENIED, tool),
            "not on the allowlist",
        )
    elif errors := schema_errors(rule.args_schema, args):
        reason, detail = (
            stop_reasons.for_tool(stop_reasons.INVALID_TOOL_ARGS, tool),
            "; ".join(errors),
        )
    elif repeats() >= policy.loop_max_repeats:
        reason = stop_reasons.for_tool(stop_reasons.LOOP_DETECTED, tool)
        detail = f"same arguments {policy.loop_max_repeats} times already"
    elif degraded(rule):
        reason, detail = (
            stop_reasons.for_tool(stop_reasons.TOOL_DEGRADED, tool),
            "circuit breaker open",
        )
    elif rule.max_calls_per_run is not None and calls_of_tool() >= rule.max_calls_per_run:
        reason = stop_reasons.MAX_TOOL_CALLS
        detail = f"per-run cap of {tool} ({rule.max_calls_per_run}) reached"
    elif run.max_usd is not None and run.usd + rule.cost_usd > run.max_usd:
        reason, detail = stop_reasons.MAX_USD, f"{tool} costs {rule.cost_usd}"

    if reason is not None:
        return Verdict(Decision.STOP, reason, detail, rule)
    decision = Decision.PENDING_APPROVAL if rule.approval_required else Decision.ALLOW
    return Verdict(decision, None, "", rule)


def step_verdict(
    *,
    run: RunCounters,
    agent_enabled: bool,
    kill_mode: str,
    tokens: int,
    usd: Decimal,
) -> str | None:
    """The stop reason of a model step that may not be counted, or None to continue."""
    if kill_mode == KillSwitchMode.STOP_ALL:
        return stop_reasons.KILL_SWITCH
    if not agent_enabled:
        return stop_reasons.AGENT_DISABLED
    if run.max_seconds is not None and run.seconds > run.max_seconds:
        return stop_reasons.MAX_SECONDS
    if run.max_steps is not None and run.steps + 1 > run.max_steps:
        return stop_reasons.MAX_STEPS
    if run.max_tokens is not None and run.tokens + tokens > run.max_tokens:
        return stop_reasons.MAX_TOKENS
    if run.max_usd is not None and run.usd + usd > run.max_usd:
        return stop_reasons.MAX_USD
    return None


def output_errors(rule: ToolRule, output: Any) -> list[str]:
    """Why a successful call's output may not be passed to the agent (size cap, schema)."""
    size = len(json.dumps(output, default=str).encode())
    if size > rule.max_output_bytes:
        return [f"output is {size} bytes, over the cap of {rule.max_output_bytes}"]
    return schema_errors(rule.output_schema, output)


def result_stop_reason(
    *, run: RunCounters, tool: str, spend: Decimal, errors: list[str]
) -> str | None:
    """The stop reason a reported result ends the run with, or None."""
    if run.max_usd is not None and run.usd + spend > run.max_usd:
        return stop_reasons.MAX_USD
    if errors:
        return stop_reasons.for_tool(stop_reasons.INVALID_TOOL_OUTPUT, tool)
    return None
