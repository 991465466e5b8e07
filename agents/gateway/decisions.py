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
from agents.models import (
    BIGINT_COLUMN_MAX,
    INT_COLUMN_MAX,
    USD_COLUMN_MAX,
    Decision,
    KillSwitchMode,
)
from agents.policy.document import Policy, ToolRule, kill_switch_turns_off, schema_errors


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
    def seconds(self) -> float:
        """Active time: elapsed less the time spent waiting for people (max_seconds bounds it)."""
        ...


def _within(budget: int | None, column_max: int) -> int:
    """A counter's real ceiling: its budget, and never more than its column holds."""
    return column_max if budget is None else min(budget, column_max)


def _usd_within(budget: Decimal | None) -> Decimal:
    return USD_COLUMN_MAX if budget is None else min(budget, USD_COLUMN_MAX)


def args_errors(rule: ToolRule, args: dict[str, Any]) -> list[str]:
    """What is wrong with a call's arguments against its tool's argument schema."""
    return schema_errors(rule.args_schema, args)


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
    invalid_args: Callable[[ToolRule], list[str]] | None = None,
    denied: str = "",
) -> Verdict:
    """Decide one tool call in SPEC.md's order (the run is known to be active).

    ``repeats`` (counted calls with the same tool and arguments), ``calls_of_tool`` (counted
    calls of the tool) and ``degraded`` (the breaker refuses the call) are called only when
    the checks before them passed, so the gateway pays their queries only then.
    ``invalid_args`` gives the argument check's result (the gateway's was computed before the
    run was locked); it too is asked only at its place in the order. Without it the arguments
    are checked here (``args_errors``).

    Every counter is bounded by its column as well as by its budget: a call that would take
    ``tool_calls`` or ``usd`` past what the run's row holds stops with that budget's reason.

    ``denied`` is a front door's own reason to deny an allowed tool at the allowlist's place
    (the MCP endpoint's: the tool's definition changed upstream and waits for an admin).
    """
    check_args = invalid_args or (lambda rule: args_errors(rule, args))
    rule = policy.tool_rule_for(tool, agent_name)
    reason: str | None = None
    detail = ""
    if kill_mode == KillSwitchMode.STOP_ALL:
        reason, detail = stop_reasons.KILL_SWITCH, "kill switch: stop_all"
    elif not agent_enabled:
        reason = stop_reasons.AGENT_DISABLED
    elif kill_switch_turns_off(kill_mode, rule):
        reason = stop_reasons.KILL_SWITCH
        if kill_mode == KillSwitchMode.DISABLE_WRITES:
            detail = f"kill switch: writes are disabled ({tool} is a write)"
        else:
            detail = f"kill switch: expensive tools are disabled ({tool})"
    elif run.max_seconds is not None and run.seconds > run.max_seconds:
        reason = stop_reasons.MAX_SECONDS
    elif run.tool_calls + 1 > _within(run.max_tool_calls, INT_COLUMN_MAX):
        reason, detail = (
            stop_reasons.MAX_TOOL_CALLS,
            f"call {run.tool_calls + 1} of {_within(run.max_tool_calls, INT_COLUMN_MAX)}",
        )
    elif not policy.is_allowed(tool, agent_name) or denied:
        reason, detail = (
            stop_reasons.for_tool(stop_reasons.TOOL_DENIED, tool),
            denied or "not on the allowlist",
        )
    elif errors := check_args(rule):
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
    elif run.usd + rule.cost_usd > _usd_within(run.max_usd):
        reason, detail = stop_reasons.MAX_USD, f"{tool} costs {rule.cost_usd}"
        if run.max_usd is None:
            detail += f"; a run's spend is at most {USD_COLUMN_MAX}"

    if reason is not None:
        return Verdict(Decision.STOP, reason, detail, rule)
    decision = Decision.PENDING_APPROVAL if rule.approval_required else Decision.ALLOW
    return Verdict(decision, None, "", rule)


REFUSABLE = (stop_reasons.TOOL_DENIED, stop_reasons.INVALID_TOOL_ARGS)


def refusal_applies(*, policy: Policy, agent_name: str, stop_reason: str, refusals: int) -> bool:
    """Whether a stopping verdict refuses only that call (the run goes on) rather than ending
    the run: the policy's ``on_refusal: refuse_call`` for this agent, a denied tool or invalid
    arguments (budgets, loops, breakers, the kill switch and a paused agent always stop), and
    fewer than ``max_refusals`` refusals in the run so far (``refusals``)."""
    action, limit = policy.refusal_rule(agent_name)
    kind = stop_reason.partition(":")[0]
    return action == "refuse_call" and kind in REFUSABLE and refusals < limit


def step_verdict(
    *,
    run: RunCounters,
    agent_enabled: bool,
    kill_mode: str,
    tokens: int,
    usd: Decimal,
) -> str | None:
    """The stop reason of a model step that may not be counted, or None to continue.

    ``tokens`` and ``usd`` are what the step used (a step reported after the model call) or
    what it is estimated to use (the step gate, asked before the call): either way the step
    that would take a counter past its budget is the one refused.

    A step that would take a counter past what its column holds is refused like one past its
    budget: the column's capacity is a ceiling under every budget (``max_usd`` unset still
    means at most 999999.999999 per run).
    """
    reason = finish_verdict(run=run, agent_enabled=agent_enabled, kill_mode=kill_mode)
    if reason is not None:
        return reason
    if run.steps + 1 > _within(run.max_steps, INT_COLUMN_MAX):
        return stop_reasons.MAX_STEPS
    return spend_verdict(run=run, tokens=tokens, usd=usd)


def spend_verdict(*, run: RunCounters, tokens: int, usd: Decimal) -> str | None:
    """``max_tokens`` or ``max_usd`` when spending ``tokens`` and ``usd`` more would take the run
    past that budget (or past what its column holds), else None. The step gate's usage report
    asks it after the model call: the usage is recorded, and the run stops."""
    if run.tokens + tokens > _within(run.max_tokens, BIGINT_COLUMN_MAX):
        return stop_reasons.MAX_TOKENS
    if run.usd + usd > _usd_within(run.max_usd):
        return stop_reasons.MAX_USD
    return None


def finish_verdict(*, run: RunCounters, agent_enabled: bool, kill_mode: str) -> str | None:
    """The stop reason a run ends with instead of the agent's own finish (or its next step),
    or None: the kill switch's stop_all, a disabled agent, active time past max_seconds."""
    if kill_mode == KillSwitchMode.STOP_ALL:
        return stop_reasons.KILL_SWITCH
    if not agent_enabled:
        return stop_reasons.AGENT_DISABLED
    if run.max_seconds is not None and run.seconds > run.max_seconds:
        return stop_reasons.MAX_SECONDS
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
    if run.usd + spend > _usd_within(run.max_usd):
        return stop_reasons.MAX_USD
    if errors:
        return stop_reasons.for_tool(stop_reasons.INVALID_TOOL_OUTPUT, tool)
    return None
