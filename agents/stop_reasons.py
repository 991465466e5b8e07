"""The closed vocabulary of stop reasons (SPEC.md, "Budgets and stop reasons")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.urls import reverse

OK = "ok"
ERROR = "error"
MAX_STEPS = "max_steps"
MAX_SECONDS = "max_seconds"
MAX_TOOL_CALLS = "max_tool_calls"
MAX_USD = "max_usd"
MAX_TOKENS = "max_tokens"
KILL_SWITCH = "kill_switch"
AGENT_DISABLED = "agent_disabled"
CANCELLED = "cancelled"

TOOL_DENIED = "tool_denied"
INVALID_TOOL_ARGS = "invalid_tool_args"
INVALID_TOOL_OUTPUT = "invalid_tool_output"
LOOP_DETECTED = "loop_detected"
TOOL_DEGRADED = "tool_degraded"
APPROVAL_REJECTED = "approval_rejected"
APPROVAL_TIMEOUT = "approval_timeout"

PLAIN = (
    OK,
    ERROR,
    MAX_STEPS,
    MAX_SECONDS,
    MAX_TOOL_CALLS,
    MAX_USD,
    MAX_TOKENS,
    KILL_SWITCH,
    AGENT_DISABLED,
    CANCELLED,
)
PER_TOOL = (
    TOOL_DENIED,
    INVALID_TOOL_ARGS,
    INVALID_TOOL_OUTPUT,
    LOOP_DETECTED,
    TOOL_DEGRADED,
    APPROVAL_REJECTED,
    APPROVAL_TIMEOUT,
)
ALL_KINDS = PLAIN + PER_TOOL


def for_tool(kind: str, tool: str) -> str:
    assert kind in PER_TOOL, kind
    return f"{kind}:{tool}"


def kind_of(stop_reason: str) -> str:
    """``tool_denied:email.send`` -> ``tool_denied``."""
    return stop_reason.split(":", 1)[0]


def is_valid(stop_reason: str) -> bool:
    kind, _, tool = stop_reason.partition(":")
    if kind in PLAIN:
        return not tool
    return kind in PER_TOOL and bool(tool)


# What happened and what to do about it, in plain words, for the console.
EXPLANATIONS: dict[str, tuple[str, str]] = {
    OK: ("The agent finished its task.", "Nothing to do."),
    ERROR: (
        "The agent reported a failure of its own.",
        "Read the error in the trace; retry only once the cause is understood.",
    ),
    MAX_STEPS: (
        "The run used every model step its budget allowed.",
        "Check the trace for a loop or a task too large for one run before raising max_steps.",
    ),
    MAX_SECONDS: (
        "The run went past its time budget (or went silent and the server stopped it).",
        "Look for a slow tool or a dead agent process; raise max_seconds only if the work is real.",
    ),
    MAX_TOOL_CALLS: (
        "The run reached its tool-call budget (or a tool's per-run cap).",
        "An agent retrying through a failing dependency looks like this: check the tool outputs.",
    ),
    MAX_USD: (
        "The next call would have taken the run past its spending budget.",
        "Check which tools cost the most in the trace before raising max_usd.",
    ),
    MAX_TOKENS: (
        "The run would have exceeded its token budget.",
        "Prompts may be bloating (pasted pages, long histories); trim before raising max_tokens.",
    ),
    KILL_SWITCH: (
        "The global kill switch forbade this call or this run.",
        "See the kill switch page for who turned it on and why.",
    ),
    AGENT_DISABLED: (
        "This agent was paused (on-call or an admin) or disabled (an admin).",
        "The detail says who and why; ask them before resuming or enabling it again.",
    ),
    CANCELLED: (
        "An operator stopped this run from the console.",
        "See the audit log for who and why.",
    ),
    TOOL_DENIED: (
        "The agent asked for a tool that is unknown or not on its allowlist (default-deny).",
        "If the tool is legitimate, an admin adds it to the policy; otherwise the agent misbehaved.",
    ),
    INVALID_TOOL_ARGS: (
        "The tool's arguments did not match the tool's argument schema.",
        "Compare the arguments in the trace with the schema in the policy editor.",
    ),
    INVALID_TOOL_OUTPUT: (
        "The tool's output failed its output schema or size cap; it was not passed to the agent.",
        "The tool or its dependency is returning something unexpected: check it.",
    ),
    LOOP_DETECTED: (
        "The agent called the same tool with the same arguments too many times.",
        "The agent is stuck; look at what it did with the previous outputs.",
    ),
    TOOL_DEGRADED: (
        "The tool's recent failure rate opened its circuit breaker (degrade mode).",
        "The dependency behind the tool is unstable; the breaker closes by itself when it recovers.",
    ),
    APPROVAL_REJECTED: (
        "A reviewer rejected the write.",
        "Read the reviewer's comment in the trace.",
    ),
    APPROVAL_TIMEOUT: (
        "Nobody decided the approval request before it expired.",
        "Check the approvals queue is watched; the agent may retry with a new run.",
    ),
}


def explain(stop_reason: str) -> tuple[str, str]:
    return EXPLANATIONS.get(kind_of(stop_reason), ("Unknown stop reason.", ""))


# --- a run's stop, explained with its numbers and the next step (the run page) ---------------

# The budget each budget stop reason names, with its usage counter and the words for its unit.
BUDGET_USAGE: dict[str, tuple[str, str]] = {
    MAX_STEPS: ("steps", "model steps"),
    MAX_SECONDS: ("seconds", "seconds of active time"),
    MAX_TOOL_CALLS: ("tool_calls", "tool calls"),
    MAX_USD: ("usd", "spent"),
    MAX_TOKENS: ("tokens", "tokens"),
}


@dataclass(frozen=True)
class StopFacts:
    """What the console read about a run's stop (``agents.runs.selectors.run_summary``).

    ``tool`` is the tool of the call that was stopped (empty when no tool call was); ``tool_cap``
    and ``calls_of_tool`` are that tool's per-run cap under the run's policy version and the
    run's counted calls of it; ``breaker_*`` describe the tool's breaker now, with the cool-down
    of the policy in force; ``budget_is_agents`` says whether the budget's ceiling is the agent's
    own (else the global one).
    """

    agent: str
    budgets: dict[str, Any]
    usage: dict[str, Any]
    detail: str = ""
    tool: str = ""
    tool_cap: int | None = None
    calls_of_tool: int = 0
    breaker_state: str | None = None
    breaker_opened_at: datetime | None = None
    breaker_trial_calls_left: int = 0
    cooldown_seconds: int | None = None
    approval_id: int | None = None
    budget_is_agents: bool = False
    # The policy's ceiling for the budget that stopped the run (None: no limit), when known.
    ceiling_known: bool = False
    ceiling: Any = None
    now: datetime | None = None


@dataclass(frozen=True)
class NextStep:
    """A link to the page where the next step is taken."""

    label: str
    url_name: str
    args: tuple[Any, ...] = ()

    @property
    def href(self) -> str:
        return reverse(self.url_name, args=self.args)


@dataclass(frozen=True)
class StopExplanation:
    reason: str
    what: str
    todo: str
    numbers: str = ""
    breaker: str = ""
    detail: str = ""
    next_step: NextStep | None = None


def _number(budget: str, value: Any) -> str:
    if value is None:
        return "∞"
    if budget == MAX_USD:
        return f"${float(value):,.4f}"
    if budget == MAX_SECONDS:
        return f"{float(value):,.0f}"
    return f"{int(value):,}"


def _breaker_words(tool: str, facts: StopFacts) -> str:
    """When the tool's breaker next lets a call through, from its state now."""
    now = facts.now or datetime.now(UTC)
    if facts.breaker_state in (None, "closed"):
        return f"The breaker of {tool} is closed now: its calls go through."
    if facts.breaker_state == "half_open":
        if facts.breaker_trial_calls_left > 0:
            return (
                f"The breaker of {tool} is half-open: it lets {facts.breaker_trial_calls_left}"
                " more trial call(s) through now."
            )
        return (
            f"The breaker of {tool} is half-open and its trial call is out: a success closes it,"
            " a failure opens it again."
        )
    if facts.breaker_opened_at is None or facts.cooldown_seconds is None:
        return f"The breaker of {tool} is open."
    trial_at = facts.breaker_opened_at + timedelta(seconds=facts.cooldown_seconds)
    if trial_at <= now:
        return (
            f"The breaker of {tool} is open and its {facts.cooldown_seconds}s cool-down is over:"
            " it lets the next call through now, as a trial."
        )
    wait = int((trial_at - now).total_seconds()) + 1
    return (
        f"The breaker of {tool} is open (since {facts.breaker_opened_at:%H:%M:%S} UTC, cool-down"
        f" {facts.cooldown_seconds}s): it lets a trial call through at {trial_at:%H:%M:%S} UTC,"
        f" in {wait}s."
    )


def _budget_step(budget: str, facts: StopFacts) -> NextStep:
    if facts.budget_is_agents:
        return NextStep(f"Raise {budget} for {facts.agent}", "policy:agent_budgets", (facts.agent,))
    return NextStep(f"Raise {budget} in the policy", "policy:budgets")


def explain_run(stop_reason: str, facts: StopFacts) -> StopExplanation:
    """``explain`` with the run's numbers: which budget or cap stopped it and at what, when the
    tool's breaker lets a call through again, and a link to where the next step is taken."""
    kind = kind_of(stop_reason)
    tool = stop_reason.partition(":")[2] or facts.tool
    what, todo = explain(stop_reason)
    numbers = breaker = ""
    next_step: NextStep | None = None
    if (
        kind == MAX_TOOL_CALLS
        and facts.tool
        and facts.tool_cap is not None
        and (
            facts.budgets.get(MAX_TOOL_CALLS) is None
            or facts.usage.get("tool_calls", 0) < facts.budgets[MAX_TOOL_CALLS]
        )
    ):
        # The run's budget is checked first: under it, the stop was the tool's own cap.
        what = f"The run reached the per-run cap of {facts.tool}."
        numbers = (
            f"{facts.calls_of_tool} of {facts.tool_cap} calls of {facts.tool} (its per-run cap)"
        )
        next_step = NextStep(f"Raise the per-run cap of {facts.tool}", "policy:tool", (facts.tool,))
    elif kind in BUDGET_USAGE:
        counter, unit = BUDGET_USAGE[kind]
        used, limit = facts.usage.get(counter), facts.budgets.get(kind)
        numbers = f"{_number(kind, used)} of {_number(kind, limit)} {unit} (the run's budget)"
        if kind == MAX_TOOL_CALLS:
            what = "The run used every tool call its budget allowed."
        if (
            facts.ceiling_known
            and limit is not None
            and (facts.ceiling is None or limit < facts.ceiling)
        ):
            # The run asked for less than the policy allows: raising the policy changes nothing.
            numbers += f"; the agent asked for it, the policy allows {_number(kind, facts.ceiling)}"
        else:
            next_step = _budget_step(kind, facts)
    elif kind == TOOL_DEGRADED:
        breaker = _breaker_words(tool, facts)
        next_step = NextStep(f"Open {tool}'s policy and breaker", "policy:tool", (tool,))
    elif kind in (TOOL_DENIED, INVALID_TOOL_ARGS, INVALID_TOOL_OUTPUT, LOOP_DETECTED):
        next_step = NextStep(f"Open {tool} in the policy", "policy:tool", (tool,))
    elif kind in (APPROVAL_REJECTED, APPROVAL_TIMEOUT) and facts.approval_id is not None:
        next_step = NextStep("Look at the approval request", "approvals:card", (facts.approval_id,))
    elif kind == KILL_SWITCH:
        next_step = NextStep("Open the kill switch", "kill_switch")
    elif kind == AGENT_DISABLED:
        next_step = NextStep(f"Open the agent {facts.agent}", "agents:detail", (facts.agent,))
    elif kind == CANCELLED:
        next_step = NextStep("See who stopped it in the audit log", "audit")
    return StopExplanation(
        reason=stop_reason,
        what=what,
        todo=todo,
        numbers=numbers,
        breaker=breaker,
        detail=facts.detail,
        next_step=next_step,
    )
