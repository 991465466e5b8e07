"""pydantic-ai against a live console: a FunctionModel script, tools with retries on (the
agent's ``retries=3``, a tool that raises ModelRetry), and the one line of glue
(``capabilities=[governed(run)]``). Every test runs with ``run_sync`` (a Run) and ``run``
(an AsyncRun)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from opsconsole_client import AsyncGateway, Budgets, Gateway, Stop
from opsconsole_client.adapters.pydantic_ai import governed

from .conftest import FAST_RETRIES, AsyncSwitchableTransport, Console, SwitchableTransport

MODES = ["run_sync", "run"]
CALL_IDS = itertools.count(1)


def calls(*tool_calls: tuple[str, dict[str, Any]]) -> ModelResponse:
    return ModelResponse(
        parts=[
            ToolCallPart(name, args, tool_call_id=f"call_{name}_{next(CALL_IDS)}")
            for name, args in tool_calls
        ],
        usage=RequestUsage(input_tokens=120, output_tokens=15),
    )


def says(text: str) -> ModelResponse:
    return ModelResponse(
        parts=[TextPart(text)], usage=RequestUsage(input_tokens=200, output_tokens=30)
    )


class Script:
    """A FunctionModel that answers with its responses in order; a call past the end fails."""

    def __init__(self, responses: list[ModelResponse]) -> None:
        self.responses = responses
        self.calls = 0
        self.model = FunctionModel(self.respond, model_name="scripted")

    def respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls += 1
        assert self.calls <= len(self.responses), "the model was called past its script"
        return self.responses[self.calls - 1]


def make_agent(script: Script, ran: list[str]) -> Agent[None, str]:
    agent = Agent(script.model, retries=3, instructions="Handle support tickets.")

    @agent.tool_plain
    def search_kb(query: str) -> str:
        """Search the knowledge base."""
        ran.append("search_kb")
        if not query:
            raise ModelRetry("say what to search for")
        return f"3 articles about {query}"

    @agent.tool_plain
    def send_email(to: str, body: str) -> str:
        """Send an email to a customer."""
        ran.append("send_email")
        return f"sent to {to}"

    @agent.tool_plain
    def delete_db(name: str) -> str:
        """Delete a database."""
        ran.append("delete_db")
        return f"{name} deleted"

    return agent


@dataclass
class Outcome:
    run_id: int = 0
    answer: Any = None
    stop_from_agent: Stop | None = None
    stop_from_run: Stop | None = None
    ran: list[str] = field(default_factory=list)
    model_calls: int = 0


def run_agent(
    console: Console,
    mode: str,
    responses: list[ModelResponse],
    *,
    budgets: Budgets | None = None,
    before: Callable[[int], None] | None = None,
    console_down: bool = False,
) -> Outcome:
    outcome = Outcome()
    script = Script(responses)
    agent = make_agent(script, outcome.ran)
    task = "Handle ticket 4711."
    if mode == "run_sync":
        transport = SwitchableTransport()
        with Gateway(
            console.url, key=console.agent_key, retry_policy=FAST_RETRIES, transport=transport
        ) as gateway:
            try:
                with gateway.run("pydantic-ai ticket", budgets=budgets) as run:
                    outcome.run_id = run.id
                    if before:
                        before(run.id)
                    transport.down = console_down
                    try:
                        result = agent.run_sync(task, capabilities=[governed(run)])
                    except Stop as stop:
                        outcome.stop_from_agent = stop
                    else:
                        outcome.answer = run.answer = result.output
            except Stop as stop:
                outcome.stop_from_run = stop
    else:

        async def main() -> None:
            transport = AsyncSwitchableTransport()
            async with AsyncGateway(
                console.url, key=console.agent_key, retry_policy=FAST_RETRIES, transport=transport
            ) as gateway:
                try:
                    async with gateway.run("pydantic-ai ticket", budgets=budgets) as run:
                        outcome.run_id = run.id
                        if before:
                            before(run.id)
                        transport.down = console_down
                        try:
                            result = await agent.run(task, capabilities=[governed(run)])
                        except Stop as stop:
                            outcome.stop_from_agent = stop
                        else:
                            outcome.answer = run.answer = result.output
                except Stop as stop:
                    outcome.stop_from_run = stop

        asyncio.run(main())
    outcome.model_calls = script.calls
    return outcome


def assert_stopped(console: Console, outcome: Outcome, reason: str) -> None:
    """agent.run raised the stop, the run block raised it, and the console agrees."""
    assert outcome.stop_from_agent is not None, f"the agent returned {outcome.answer!r}"
    assert outcome.stop_from_agent.reason == reason
    assert outcome.stop_from_run is not None and outcome.stop_from_run.reason == reason
    record = console.run_record(outcome.run_id)
    assert (record["status"], record["stop_reason"]) == ("stopped", reason)


@pytest.mark.parametrize("mode", MODES)
def test_an_allowed_tool_runs_and_the_run_succeeds(console: Console, mode: str) -> None:
    outcome = run_agent(
        console, mode, [calls(("search_kb", {"query": "refunds"})), says("Refund sent.")]
    )

    assert outcome.stop_from_run is None and outcome.stop_from_agent is None
    assert outcome.answer == "Refund sent."
    assert outcome.ran == ["search_kb"]
    record = console.run_record(outcome.run_id)
    assert record["status"] == "succeeded"
    assert record["usage"]["tool_calls"] == 1
    assert record["usage"]["steps"] == 2
    assert record["usage"]["tokens"] == 120 + 15 + 200 + 30


@pytest.mark.parametrize("mode", MODES)
def test_a_tool_retry_is_reported_and_the_model_tries_again(console: Console, mode: str) -> None:
    outcome = run_agent(
        console,
        mode,
        [
            calls(("search_kb", {"query": ""})),
            calls(("search_kb", {"query": "refunds"})),
            says("Found it."),
        ],
    )

    assert outcome.answer == "Found it."
    assert outcome.ran == ["search_kb", "search_kb"]
    record = console.run_record(outcome.run_id)
    assert (record["status"], record["usage"]["tool_calls"]) == ("succeeded", 2)


@pytest.mark.parametrize("mode", MODES)
def test_a_denied_tool_stops_the_agent_despite_its_retries(console: Console, mode: str) -> None:
    outcome = run_agent(
        console, mode, [calls(("delete_db", {"name": "prod"})), says("All good, ticket handled.")]
    )

    assert_stopped(console, outcome, "tool_denied:delete_db")
    assert outcome.ran == []
    assert outcome.model_calls == 1


@pytest.mark.parametrize("mode", MODES)
def test_arguments_that_fail_the_schema_stop_the_run(console: Console, mode: str) -> None:
    outcome = run_agent(
        console, mode, [calls(("send_email", {"to": "x", "body": "hi"})), says("Sent.")]
    )

    assert_stopped(console, outcome, "invalid_tool_args:send_email")
    assert outcome.ran == []


@pytest.mark.parametrize("mode", MODES)
def test_the_call_past_max_tool_calls_is_stopped(console: Console, mode: str) -> None:
    outcome = run_agent(
        console,
        mode,
        [calls(("search_kb", {"query": "a"})), calls(("search_kb", {"query": "b"})), says("Ok")],
        budgets=Budgets(max_tool_calls=1),
    )

    assert_stopped(console, outcome, "max_tool_calls")
    assert outcome.ran == ["search_kb"]


@pytest.mark.parametrize("mode", MODES)
def test_the_model_call_past_max_steps_is_refused_before_it_is_made(
    console: Console, mode: str
) -> None:
    outcome = run_agent(
        console,
        mode,
        [calls(("search_kb", {"query": "a"})), says("Done.")],
        budgets=Budgets(max_steps=1),
    )

    assert_stopped(console, outcome, "max_steps")
    assert outcome.model_calls == 1
    assert console.run_record(outcome.run_id)["usage"]["steps"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_an_approved_write_runs_after_the_reviewer_approves(console: Console, mode: str) -> None:
    outcome = run_agent(
        console,
        mode,
        [calls(("send_email", {"to": "ann@example.com", "body": "Refunded."})), says("Emailed.")],
        before=lambda run_id: console.decide_approval_later(run_id, "approve"),
    )

    assert outcome.stop_from_run is None, outcome.stop_from_run
    assert outcome.answer == "Emailed."
    assert outcome.ran == ["send_email"]
    assert console.run_record(outcome.run_id)["status"] == "succeeded"


@pytest.mark.parametrize("mode", MODES)
def test_a_rejected_write_never_runs_and_stops_the_run(console: Console, mode: str) -> None:
    outcome = run_agent(
        console,
        mode,
        [calls(("send_email", {"to": "ann@example.com", "body": "Refunded."})), says("Emailed.")],
        before=lambda run_id: console.decide_approval_later(run_id, "reject"),
    )

    assert_stopped(console, outcome, "approval_rejected:send_email")
    assert outcome.ran == []


@pytest.mark.parametrize("mode", MODES)
def test_an_unreachable_console_stops_the_agent_before_the_model_is_called(
    console: Console, mode: str
) -> None:
    outcome = run_agent(
        console, mode, [calls(("search_kb", {"query": "a"})), says("Done.")], console_down=True
    )

    assert outcome.stop_from_agent is not None
    assert outcome.stop_from_agent.reason == "control_plane_unavailable"
    assert outcome.stop_from_run is not None
    assert outcome.model_calls == 0
    assert outcome.ran == []


def test_a_streamed_model_request_is_gated_and_its_usage_reported(console: Console) -> None:
    streamed: list[int] = []

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        streamed.append(1)
        yield "Refund "
        yield "sent."

    async def main() -> tuple[int, str, int]:
        agent = Agent(FunctionModel(stream_function=stream, model_name="streamed"))
        async with AsyncGateway(console.url, key=console.agent_key) as gateway:
            async with gateway.run("pydantic-ai stream") as run:
                async with agent.run_stream("Go.", capabilities=[governed(run)]) as result:
                    run.answer = await result.get_output()
                used = result.usage
            return run.id, run.answer, used.input_tokens + used.output_tokens

    run_id, answer, tokens = asyncio.run(main())

    assert (answer, streamed) == ("Refund sent.", [1])
    record = console.run_record(run_id)
    assert (record["status"], record["usage"]["steps"]) == ("succeeded", 1)
    assert record["usage"]["tokens"] == tokens > 0


def test_a_streamed_model_request_past_max_steps_is_never_sent(console: Console) -> None:
    streamed: list[int] = []

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        streamed.append(1)
        yield "Never."

    async def main() -> None:
        agent = Agent(FunctionModel(stream_function=stream, model_name="streamed"))
        async with (
            AsyncGateway(console.url, key=console.agent_key) as gateway,
            gateway.run("pydantic-ai stream", budgets=Budgets(max_steps=0)) as run,
            agent.run_stream("Go.", capabilities=[governed(run)]) as result,
        ):
            await result.get_output()

    with pytest.raises(Stop) as stopped:
        asyncio.run(main())

    assert stopped.value.reason == "max_steps"
    assert streamed == []
