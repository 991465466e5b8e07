"""The OpenAI Agents SDK: governed function tools and run hooks that gate model calls.

``pip install 'agent-ops-console-client[openai-agents]'``, then, inside ``async with
agateway.run(...) as run:`` (or ``with gateway.run(...) as run:`` and ``Runner.run_sync``)::

    agent = Agent(name="support", tools=governed_tools(run, [search_kb, send_email]))
    result = await Runner.run(agent, "Handle ticket 4711.", hooks=governed_hooks(run))

- :func:`governed_tools` wraps each ``FunctionTool``'s invoker, outside the SDK's own failure
  handling: the gateway decides before the tool runs (with the model's ``call_id`` as the call's
  key), the result is reported after. A refusal raises :class:`Stop` out of ``Runner.run``; the
  SDK's ``failure_error_function`` never sees it, so the model cannot be told "please try again".
- :func:`governed_hooks` asks the gateway before each model call (``on_llm_start``; a refused
  step is never sent) and reports the tokens of the response (``on_llm_end``). To add hooks of
  your own, subclass :class:`GovernedHooks` and call ``super()``.

**Approvals that survive a restart.** With ``governed_tools(run, tools, interrupt=True)`` a call
that the console holds for people does not block: it becomes one of the SDK's own approval
interruptions (``needs_approval``), so the run returns with ``result.interruptions`` and its
``RunState`` can be saved (``result.to_state().to_string()``) and the process can exit. Later,
in any process, resume the console run with the same ``idempotency_key`` and the SDK run with
the saved state; :func:`approve_console_interruptions` hands the decision back to the console::

    async with agateway.run(task, idempotency_key="ticket-4711") as run:   # the same run
        agent = Agent(name="support", tools=governed_tools(run, tools, interrupt=True))
        state = await RunState.from_string(agent, saved)
        approve_console_interruptions(state, agent.tools)
        result = await Runner.run(agent, state, hooks=governed_hooks(run))

The resumed tool call asks again with the same ``call_id``: the console answers with the
reviewers' verdict (waiting if they have not decided yet); a rejection is ``Stop``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from agents import Agent, FunctionTool, RunContextWrapper, RunHooks, RunState, Tool
from agents.items import ModelResponse, TResponseInputItem
from agents.tool_context import ToolContext

from opsconsole_client import StepTicket
from opsconsole_client.adapters._common import AnyRun, decide, gate, parsed_args, report, usage

__all__ = [
    "GovernedHooks",
    "approve_console_interruptions",
    "governed_hooks",
    "governed_tools",
]

# Set on the tools this module wraps, so a resumed state knows which approvals are the console's.
_CONSOLE_APPROVAL = "_opsconsole_console_approval"


def governed_tools(run: AnyRun, tools: Sequence[Tool], *, interrupt: bool = False) -> list[Tool]:
    """Copies of the tools that ask the gateway before they run. Only ``FunctionTool`` can be
    governed (hosted tools run at the model provider): anything else is a TypeError rather than
    a tool that bypasses the console. ``interrupt=True`` maps a call waiting for the console's
    approval onto the SDK's approval interruptions (see the module's doc)."""
    governed: list[Tool] = []
    for tool in tools:
        if not isinstance(tool, FunctionTool):
            raise TypeError(
                f"{type(tool).__name__} {getattr(tool, 'name', '')!r} cannot be governed: only "
                "FunctionTool calls pass through this process"
            )
        governed.append(_govern(run, tool, interrupt))
    return governed


def _govern(run: AnyRun, tool: FunctionTool, interrupt: bool) -> FunctionTool:
    invoke = tool.on_invoke_tool
    name = tool.name

    async def on_invoke_tool(context: ToolContext[Any], arguments: str) -> Any:
        decision = await decide(run, name, parsed_args(arguments), call_id=context.tool_call_id)
        try:
            result = await invoke(context, arguments)
        except Exception as exc:
            await report(run, decision, error=exc)
            raise
        await report(run, decision, result=result, error=None)
        return result

    copy = dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)
    if interrupt:
        own = tool.needs_approval

        async def needs_approval(
            context: RunContextWrapper[Any], params: dict[str, Any], call_id: str
        ) -> bool:
            # Ask without waiting: a held call interrupts the run instead of blocking it. The
            # same call_id later returns this call's verdict and spends nothing twice.
            decision = await decide(run, name, params, call_id=call_id, wait=False)
            if decision.decision == "pending_approval":
                return True
            if callable(own):
                return await own(context, params, call_id)
            return bool(own)

        copy.needs_approval = needs_approval
        setattr(copy, _CONSOLE_APPROVAL, own is False)
    return copy


def approve_console_interruptions(state: RunState[Any, Any], tools: Sequence[Tool]) -> int:
    """Approve, in the SDK's state, the interruptions that stand for console approvals, so the
    resumed run asks the console for its verdict. Interruptions of tools that need the SDK's own
    approval as well are left for the application. Returns how many were approved."""
    console_tools = {tool.name for tool in tools if getattr(tool, _CONSOLE_APPROVAL, False) is True}
    approved = 0
    for item in state.get_interruptions():
        if (item.tool_name or getattr(item.raw_item, "name", None)) in console_tools:
            state.approve(item)
            approved += 1
    return approved


def governed_hooks(run: AnyRun) -> GovernedHooks:
    """Run hooks that gate each model call (``Runner.run(..., hooks=governed_hooks(run))``)."""
    return GovernedHooks(run)


class GovernedHooks(RunHooks[Any]):
    """``on_llm_start`` asks the gateway (Stop when the step would break a budget);
    ``on_llm_end`` reports the response's tokens."""

    def __init__(self, run: AnyRun) -> None:
        self.governed_run = run
        self.tickets: dict[int, list[StepTicket]] = {}

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        ticket = await gate(self.governed_run, model=_model_name(agent))
        self.tickets.setdefault(id(agent), []).append(ticket)

    async def on_llm_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse
    ) -> None:
        pending = self.tickets.get(id(agent))
        if pending:
            await usage(
                self.governed_run,
                pending.pop(0),
                tokens_in=response.usage.input_tokens,
                tokens_out=response.usage.output_tokens,
            )


def _model_name(agent: Agent[Any]) -> str | None:
    model = agent.model
    if isinstance(model, str):
        return model
    name = getattr(model, "model", None)
    return name if isinstance(name, str) else None
