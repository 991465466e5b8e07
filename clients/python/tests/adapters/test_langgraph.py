"""LangGraph against a live console: a ToolNode graph with handle_tool_errors=True, a scripted chat
model, and the two lines of glue (governed_tools, governed_callbacks). Every test runs with
``invoke`` (a Run), ``ainvoke`` (an AsyncRun) and ``ainvoke`` with a Run."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import BaseTool, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from opsconsole_client import AsyncGateway, Budgets, Gateway, Stop
from opsconsole_client.adapters.langgraph import governed_callbacks, governed_tools

from .conftest import FAST_RETRIES, AsyncSwitchableTransport, Console, SwitchableTransport

# ainvoke with a (sync) Run: the adapter's blocking calls go to worker threads.
MODES = ["invoke", "ainvoke", "ainvoke-with-run"]
CALL_IDS = itertools.count(1)


class ScriptedChatModel(FakeMessagesListChatModel):
    """Answers with its script in order; a call past the end fails the test."""

    calls: int = 0

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.calls += 1
        assert self.calls <= len(self.responses), "the model was called past its script"
        return super()._generate(messages, *args, **kwargs)


def calls(*tool_calls: tuple[str, dict[str, Any]]) -> AIMessage:
    return AIMessage(
        "",
        tool_calls=[
            {"name": name, "args": args, "id": f"call_{name}_{next(CALL_IDS)}"}
            for name, args in tool_calls
        ],
        usage_metadata={"input_tokens": 120, "output_tokens": 15, "total_tokens": 135},
    )


def says(text: str) -> AIMessage:
    return AIMessage(
        text, usage_metadata={"input_tokens": 200, "output_tokens": 30, "total_tokens": 230}
    )


@dataclass
class Outcome:
    run_id: int = 0
    answer: str | None = None
    stop_from_invoke: Stop | None = None
    stop_from_run: Stop | None = None
    ran: list[str] = field(default_factory=list)
    model_calls: int = 0


def make_tools(ran: list[str]) -> list[BaseTool]:
    @tool
    def search_kb(query: str) -> str:
        """Search the knowledge base."""
        ran.append("search_kb")
        return f"3 articles about {query}"

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an email to a customer."""
        ran.append("send_email")
        return f"sent to {to}"

    @tool
    def delete_db(name: str) -> str:
        """Delete a database."""
        ran.append("delete_db")
        return f"{name} deleted"

    return [search_kb, send_email, delete_db]


def build_graph(model: ScriptedChatModel, tools: list[BaseTool]) -> Any:
    """The LangGraph tutorial's agent: a model node and a ToolNode that hands errors back."""

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def aagent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", RunnableLambda(agent, afunc=aagent))
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def run_agent(
    console: Console,
    mode: str,
    script: list[AIMessage],
    *,
    budgets: Budgets | None = None,
    before: Callable[[int], None] | None = None,
    console_down: bool = False,
) -> Outcome:
    outcome = Outcome()
    model = ScriptedChatModel(responses=script)
    inputs = {"messages": [HumanMessage("Handle ticket 4711.")]}
    if mode in {"invoke", "ainvoke-with-run"}:
        transport = SwitchableTransport()
        with Gateway(
            console.url, key=console.agent_key, retry_policy=FAST_RETRIES, transport=transport
        ) as gateway:
            try:
                with gateway.run("langgraph ticket", budgets=budgets) as run:
                    outcome.run_id = run.id
                    if before:
                        before(run.id)
                    transport.down = console_down
                    graph = build_graph(model, governed_tools(run, make_tools(outcome.ran)))
                    config: Any = {"callbacks": [governed_callbacks(run)]}
                    try:
                        if mode == "invoke":
                            out = graph.invoke(inputs, config)
                        else:
                            out = asyncio.run(graph.ainvoke(inputs, config))
                    except Stop as stop:
                        outcome.stop_from_invoke = stop
                    else:
                        outcome.answer = run.answer = out["messages"][-1].content
            except Stop as stop:
                outcome.stop_from_run = stop
    else:

        async def main() -> None:
            transport = AsyncSwitchableTransport()
            async with AsyncGateway(
                console.url, key=console.agent_key, retry_policy=FAST_RETRIES, transport=transport
            ) as gateway:
                try:
                    async with gateway.run("langgraph ticket", budgets=budgets) as run:
                        outcome.run_id = run.id
                        if before:
                            before(run.id)
                        transport.down = console_down
                        graph = build_graph(model, governed_tools(run, make_tools(outcome.ran)))
                        try:
                            out = await graph.ainvoke(
                                inputs, {"callbacks": [governed_callbacks(run)]}
                            )
                        except Stop as stop:
                            outcome.stop_from_invoke = stop
                        else:
                            outcome.answer = run.answer = out["messages"][-1].content
                except Stop as stop:
                    outcome.stop_from_run = stop

        asyncio.run(main())
    outcome.model_calls = model.calls
    return outcome


def assert_stopped(console: Console, outcome: Outcome, reason: str) -> None:
    """The caller of invoke saw the stop, the run block raised it, and the console agrees."""
    assert outcome.stop_from_invoke is not None, f"invoke returned {outcome.answer!r}"
    assert outcome.stop_from_invoke.reason == reason
    assert outcome.stop_from_run is not None and outcome.stop_from_run.reason == reason
    record = console.run_record(outcome.run_id)
    assert (record["status"], record["stop_reason"]) == ("stopped", reason)


@pytest.mark.parametrize("mode", MODES)
def test_an_allowed_tool_runs_and_the_run_succeeds(console: Console, mode: str) -> None:
    outcome = run_agent(
        console, mode, [calls(("search_kb", {"query": "refunds"})), says("Refund sent.")]
    )

    assert outcome.stop_from_run is None and outcome.stop_from_invoke is None
    assert outcome.answer == "Refund sent."
    assert outcome.ran == ["search_kb"]
    record = console.run_record(outcome.run_id)
    assert record["status"] == "succeeded"
    assert record["usage"]["tool_calls"] == 1
    assert record["usage"]["steps"] == 2
    assert record["usage"]["tokens"] == 120 + 15 + 200 + 30


@pytest.mark.parametrize("mode", MODES)
def test_a_denied_tool_stops_invoke_although_the_tool_node_handles_errors(
    console: Console, mode: str
) -> None:
    outcome = run_agent(
        console, mode, [calls(("delete_db", {"name": "prod"})), says("All good, ticket handled.")]
    )

    assert_stopped(console, outcome, "tool_denied:delete_db")
    assert outcome.ran == []
    assert outcome.model_calls == 1  # the model never heard of the error, so it could not go on


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
        console,
        mode,
        [calls(("search_kb", {"query": "a"})), says("Done.")],
        console_down=True,
    )

    assert outcome.stop_from_invoke is not None
    assert outcome.stop_from_invoke.reason == "control_plane_unavailable"
    assert outcome.stop_from_run is not None
    assert outcome.model_calls == 0
    assert outcome.ran == []


def test_a_replayed_tool_call_is_asked_with_the_models_call_id_and_spends_once(
    console: Console,
) -> None:
    """A resumed graph runs its tools again for the same AIMessage (ToolNode invokes each tool with
    the model's ToolCall): the console knows the call by its id and counts it once."""
    ran: list[str] = []
    call = {
        "name": "search_kb",
        "args": {"query": "refunds"},
        "id": "call_replayed",
        "type": "tool_call",
    }
    with Gateway(console.url, key=console.agent_key) as gateway, gateway.run("replay") as run:
        search_kb = governed_tools(run, make_tools(ran))[0]
        first, again = search_kb.invoke(call), search_kb.invoke(call)
        run_id = run.id

    assert first.content == again.content == "3 articles about refunds"
    assert first.tool_call_id == "call_replayed"
    record = console.run_record(run_id)
    assert (record["status"], record["usage"]["tool_calls"]) == ("succeeded", 1)
