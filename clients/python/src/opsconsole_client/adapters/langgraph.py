"""LangChain and LangGraph: governed tools and a callback handler that gates model calls.

``pip install 'agent-ops-console-client[langgraph]'``, then, inside ``with gateway.run(...) as
run:`` (or ``async with agateway.run(...) as run:`` for ``ainvoke``)::

    tools = governed_tools(run, [search_kb, send_email])   # ToolNode(tools, ...), bind_tools(tools)
    graph.invoke(inputs, config={"callbacks": [governed_callbacks(run)]})

- :func:`governed_tools` wraps each tool: the gateway decides before the tool runs (waiting for
  an approval when the call needs one), with the model's ``tool_call_id`` as the call's key, and
  the tool's result or error is reported after it. A refusal raises :class:`Stop`, which
  ``ToolNode(handle_tool_errors=True)`` does not turn into a message for the model: it ends
  ``invoke``/``ainvoke`` and reaches their caller.
- :func:`governed_callbacks` asks the gateway before every chat-model (or LLM) call made under
  the config it is given to (``run.gate``; a refused step is never sent to the model) and
  reports the tokens the model says it used (``run.usage``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.outputs import LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.tools import tool as as_tool
from langgraph.errors import GraphBubbleUp
from pydantic import BaseModel, ConfigDict, Field

from opsconsole_client import AsyncRun, Run, StepTicket
from opsconsole_client.adapters._common import AnyRun, decide, jsonable, report

__all__ = [
    "AsyncGovernedCallbacks",
    "GovernedCallbacks",
    "GovernedTool",
    "governed_callbacks",
    "governed_tools",
]

ToolInput = str | dict[str, Any] | ToolCall


def governed_tools(run: AnyRun, tools: Sequence[BaseTool | Callable[..., Any]]) -> list[BaseTool]:
    """The tools, each asking the gateway before it runs. Plain functions become tools first
    (``langchain_core.tools.tool``). The console knows each tool by its LangChain name."""
    return [
        GovernedTool.wrap(run, item if isinstance(item, BaseTool) else as_tool(item))
        for item in tools
    ]


def governed_callbacks(run: AnyRun) -> BaseCallbackHandler:
    """A callback handler that gates each model call (for ``config={"callbacks": [...]}``)."""
    if isinstance(run, AsyncRun):
        return AsyncGovernedCallbacks(run)
    return GovernedCallbacks(run)


class GovernedTool(BaseTool):
    """A tool that asks the gateway before the tool it wraps runs, and reports after."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    wrapped: BaseTool
    governed_run: Any = Field(exclude=True)  # a Run or an AsyncRun (not pydantic types)

    @classmethod
    def wrap(cls, run: AnyRun, tool: BaseTool) -> GovernedTool:
        return cls(
            name=tool.name,
            description=tool.description,
            args_schema=tool.args_schema,
            return_direct=tool.return_direct,
            response_format=tool.response_format,
            tags=tool.tags,
            metadata=tool.metadata,
            wrapped=tool,
            governed_run=run,
        )

    @property
    def tool_call_schema(self) -> Any:
        return self.wrapped.tool_call_schema

    def invoke(self, input: ToolInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        run = self.governed_run
        if not isinstance(run, Run):
            raise TypeError(
                f"{self.name} is governed by an AsyncRun: call the graph with ainvoke/astream, "
                "or govern it with a Run"
            )
        args, call_id = self._request(input)
        decision = run.decide(self.name, args, call_id=call_id)
        try:
            result = self.wrapped.invoke(input, config, **kwargs)
        except GraphBubbleUp:
            raise  # an interrupt(): the resumed graph asks again with the same call id
        except Exception as exc:
            run.report(decision, error=exc)
            raise
        output, error = _outcome(result)
        run.report(decision, result=output, error=error)
        return result

    async def ainvoke(
        self, input: ToolInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        run = self.governed_run
        args, call_id = self._request(input)
        decision = await decide(run, self.name, args, call_id=call_id)
        try:
            result = await self.wrapped.ainvoke(input, config, **kwargs)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            await report(run, decision, error=exc)
            raise
        output, error = _outcome(result)
        await report(run, decision, result=output, error=error)
        return result

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        # Only BaseTool.run() gets here, and it would skip the gateway: refuse.
        raise NotImplementedError(f"call {self.name} with invoke or ainvoke")

    def _request(self, input: ToolInput) -> tuple[dict[str, Any], str | None]:
        """The arguments the model chose (injected ones left out) and its tool_call_id."""
        call_id: str | None = None
        if isinstance(input, dict) and input.get("type") == "tool_call":
            call = cast(ToolCall, input)
            args, call_id = dict(call.get("args") or {}), call.get("id")
        elif isinstance(input, dict):
            args = dict(input)
        else:
            args = {"input": input}
        schema = self.wrapped.tool_call_schema
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            visible = set(schema.model_fields)
        elif isinstance(schema, dict):
            visible = set(schema.get("properties") or {})
        else:
            visible = set(args)
        return {name: value for name, value in args.items() if name in visible}, call_id


def _outcome(result: Any) -> tuple[Any, str | None]:
    """What to report: (output, None), or (None, error) for a tool's own error message."""
    if isinstance(result, ToolMessage):
        if result.status == "error":
            return None, str(result.content) or "the tool reported an error"
        return jsonable(result.content), None
    return jsonable(result), None


# --- model steps ------------------------------------------------------------------------------


class GovernedCallbacks(BaseCallbackHandler):
    """Gates each model call with a :class:`Run` (``invoke``; under ``ainvoke`` LangChain runs
    these methods in a worker thread)."""

    raise_error = True

    def __init__(self, run: Run) -> None:
        self.governed_run = run
        self.tickets: dict[UUID, StepTicket] = {}

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.tickets[run_id] = self.governed_run.gate(
            model=_model_name(serialized, metadata, kwargs)
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.tickets[run_id] = self.governed_run.gate(
            model=_model_name(serialized, metadata, kwargs)
        )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        ticket = self.tickets.pop(run_id, None)
        if ticket is not None:
            tokens_in, tokens_out = _tokens(response)
            self.governed_run.usage(ticket, tokens_in=tokens_in, tokens_out=tokens_out)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.tickets.pop(run_id, None)  # the step stays counted; the model said nothing used


class AsyncGovernedCallbacks(AsyncCallbackHandler):
    """Gates each model call with an :class:`AsyncRun` (``ainvoke``, ``astream``)."""

    raise_error = True
    run_inline = True

    def __init__(self, run: AsyncRun) -> None:
        self.governed_run = run
        self.tickets: dict[UUID, StepTicket] = {}

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        model = _model_name(serialized, metadata, kwargs)
        self.tickets[run_id] = await self.governed_run.gate(model=model)

    async def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        model = _model_name(serialized, metadata, kwargs)
        self.tickets[run_id] = await self.governed_run.gate(model=model)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        ticket = self.tickets.pop(run_id, None)
        if ticket is not None:
            tokens_in, tokens_out = _tokens(response)
            await self.governed_run.usage(ticket, tokens_in=tokens_in, tokens_out=tokens_out)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.tickets.pop(run_id, None)


def _model_name(
    serialized: dict[str, Any] | None, metadata: dict[str, Any] | None, kwargs: dict[str, Any]
) -> str | None:
    params = kwargs.get("invocation_params") or {}
    for value in (
        (metadata or {}).get("ls_model_name"),
        params.get("model"),
        params.get("model_name"),
        (serialized or {}).get("name"),
    ):
        if isinstance(value, str) and value:
            return value
    return None


def _tokens(response: LLMResult) -> tuple[int, int]:
    """Input and output tokens: the messages' usage_metadata, else the provider's token_usage."""
    tokens_in = tokens_out = 0
    for generations in response.generations:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage:
                tokens_in += int(usage.get("input_tokens") or 0)
                tokens_out += int(usage.get("output_tokens") or 0)
    if not tokens_in and not tokens_out and response.llm_output:
        usage = response.llm_output.get("token_usage") or {}
        tokens_in = int(usage.get("prompt_tokens") or 0)
        tokens_out = int(usage.get("completion_tokens") or 0)
    return tokens_in, tokens_out
