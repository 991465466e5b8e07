"""pydantic-ai: a capability that wraps the agent's toolset and its model.

``pip install 'agent-ops-console-client[pydantic-ai]'``, then, inside ``async with
agateway.run(...) as run:`` (or ``with gateway.run(...) as run:`` and ``agent.run_sync``)::

    result = await agent.run("Handle ticket 4711.", capabilities=[governed(run)])

- :class:`GovernedToolset` (pydantic-ai's ``get_wrapper_toolset``: every tool of the run, the
  agent's ``@agent.tool`` functions and its toolsets alike) asks the gateway before each tool
  call, with the model's ``tool_call_id`` as the call's key, and reports the result after.
- :class:`GovernedModel` (``get_wrapper_model``: every attempt at a model request) asks the
  gateway before the request is sent and reports the tokens of the response.

A refusal raises :class:`Stop`; pydantic-ai's tool retries (``ModelRetry``) and its
model-request error recovery handle ``Exception`` only, so the Stop ends ``agent.run`` and
reaches its caller. The wrappers can also be used on their own:
``GovernedToolset(toolset, governed_run=run)``, ``GovernedModel(model, run)``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool
from pydantic_core import to_jsonable_python

from opsconsole_client.adapters._common import AnyRun, decide, gate, report, usage

__all__ = ["GovernedCapability", "GovernedModel", "GovernedToolset", "governed"]


def governed(run: AnyRun) -> GovernedCapability:
    """The capability to pass to ``agent.run(..., capabilities=[governed(run)])`` (or to
    ``Agent(capabilities=...)`` when the agent is built inside the run)."""
    return GovernedCapability(governed_run=run)


@dataclass
class GovernedCapability(AbstractCapability[Any]):
    """Wraps the run's assembled toolset in :class:`GovernedToolset` and each model that serves
    a request in :class:`GovernedModel`."""

    governed_run: Any  # a Run or an AsyncRun

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        return GovernedToolset(toolset, governed_run=self.governed_run)

    def get_wrapper_model(self, model: Model) -> Model | None:
        return GovernedModel(model, self.governed_run)


@dataclass
class GovernedToolset(WrapperToolset[Any]):
    """Asks the gateway before each call of the wrapped toolset's tools, and reports after."""

    governed_run: Any = None  # a Run or an AsyncRun

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        run: AnyRun = self.governed_run
        args = to_jsonable_python(tool_args, fallback=str)
        decision = await decide(run, name, args, call_id=ctx.tool_call_id)
        try:
            result = await super().call_tool(name, tool_args, ctx, tool)
        except (CallDeferred, ApprovalRequired):
            raise  # pydantic-ai's own deferral: the same tool_call_id asks again later
        except Exception as exc:  # ModelRetry included: the model is told, the console too
            await report(run, decision, error=exc)
            raise
        await report(run, decision, result=to_jsonable_python(result, fallback=str), error=None)
        return result


class GovernedModel(WrapperModel):
    """Asks the gateway before each request to the wrapped model; reports its tokens after."""

    def __init__(self, wrapped: Model, run: AnyRun) -> None:
        super().__init__(wrapped)
        self.governed_run = run

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        ticket = await gate(self.governed_run, model=self.wrapped.model_name)
        response = await super().request(messages, model_settings, model_request_parameters)
        await usage(
            self.governed_run,
            ticket,
            tokens_in=response.usage.input_tokens,
            tokens_out=response.usage.output_tokens,
        )
        return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        ticket = await gate(self.governed_run, model=self.wrapped.model_name)
        async with super().request_stream(
            messages, model_settings, model_request_parameters, run_context
        ) as stream:
            yield stream
        used = stream.usage  # complete once the stream is consumed
        await usage(
            self.governed_run,
            ticket,
            tokens_in=used.input_tokens,
            tokens_out=used.output_tokens,
        )
