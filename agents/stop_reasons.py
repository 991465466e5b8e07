"""The closed vocabulary of stop reasons (SPEC.md, "Budgets and stop reasons")."""

from __future__ import annotations

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
        "An admin disabled this agent.",
        "Ask the admin who disabled it (audit log) before enabling it again.",
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
