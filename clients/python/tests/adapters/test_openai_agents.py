"""The OpenAI Agents SDK against a live console: the SDK's ScriptedModel, @function_tool tools
with the SDK's default failure_error_function, and the glue (governed_tools, governed_hooks).
Every test runs with ``Runner.run_sync`` (a Run) and ``Runner.run`` (an AsyncRun)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from agents import Agent, Runner, RunState, Tool, function_tool, set_tracing_disabled
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from agents.usage import Usage

from opsconsole_client import AsyncGateway, Budgets, Gateway, Stop
from opsconsole_client.adapters.openai_agents import (
    approve_console_interruptions,
    governed_hooks,
    governed_tools,
)

from .conftest import FAST_RETRIES, AsyncSwitchableTransport, Console, SwitchableTransport

set_tracing_disabled(True)  # no exporter, no network

MODES = ["run_sync", "run"]
CALL_IDS = itertools.count(1)  # the SDK wants each tool call id once per conversation


def calls(*tool_calls: tuple[str, dict[str, Any]]) -> ModelStep:
    return ModelStep(
        output=[
            function_call(name, args, call_id=f"call_{name}_{next(CALL_IDS)}")
            for name, args in tool_calls
        ],
        usage=Usage(requests=1, input_tokens=120, output_tokens=15, total_tokens=135),
    )


def says(text: str) -> ModelStep:
    return ModelStep(
        output=[assistant_message(text)],
        usage=Usage(requests=1, input_tokens=200, output_tokens=30, total_tokens=230),
    )


def make_tools(ran: list[str]) -> list[Tool]:
    @function_tool
    def search_kb(query: str) -> str:
        """Search the knowledge base."""
        ran.append("search_kb")
        return f"3 articles about {query}"

    @function_tool
    def send_email(to: str, body: str) -> str:
        """Send an email to a customer."""
        ran.append("send_email")
        return f"sent to {to}"

    @function_tool
    def delete_db(name: str) -> str:
        """Delete a database."""
        ran.append("delete_db")
        return f"{name} deleted"

    return [search_kb, send_email, delete_db]


@dataclass
class Outcome:
    run_id: int = 0
    answer: Any = None
    stop_from_runner: Stop | None = None
    stop_from_run: Stop | None = None
    ran: list[str] = field(default_factory=list)
    model_calls: int = 0


def run_agent(
    console: Console,
    mode: str,
    script: list[ModelStep],
    *,
    budgets: Budgets | None = None,
    before: Callable[[int], None] | None = None,
    console_down: bool = False,
) -> Outcome:
    outcome = Outcome()
    model = ScriptedModel(script)
    task = "Handle ticket 4711."
    if mode == "run_sync":
        transport = SwitchableTransport()
        with Gateway(
            console.url, key=console.agent_key, retry_policy=FAST_RETRIES, transport=transport
        ) as gateway:
            try:
                with gateway.run("agents sdk ticket", budgets=budgets) as run:
                    outcome.run_id = run.id
                    if before:
                        before(run.id)
                    transport.down = console_down
                    tools = governed_tools(run, make_tools(outcome.ran))
                    agent = Agent(name="support", model=model, tools=tools)
                    try:
                        result = Runner.run_sync(agent, task, hooks=governed_hooks(run))
                    except Stop as stop:
                        outcome.stop_from_runner = stop
                    else:
                        outcome.answer = run.answer = result.final_output
            except Stop as stop:
                outcome.stop_from_run = stop
    else:

        async def main() -> None:
            transport = AsyncSwitchableTransport()
            async with AsyncGateway(
                console.url, key=console.agent_key, retry_policy=FAST_RETRIES, transport=transport
            ) as gateway:
                try:
                    async with gateway.run("agents sdk ticket", budgets=budgets) as run:
                        outcome.run_id = run.id
                        if before:
                            before(run.id)
                        transport.down = console_down
                        tools = governed_tools(run, make_tools(outcome.ran))
                        agent = Agent(name="support", model=model, tools=tools)
                        try:
                            result = await Runner.run(agent, task, hooks=governed_hooks(run))
                        except Stop as stop:
                            outcome.stop_from_runner = stop
                        else:
                            outcome.answer = run.answer = result.final_output
                except Stop as stop:
                    outcome.stop_from_run = stop

        asyncio.run(main())
    outcome.model_calls = len(model.calls)
    return outcome


def assert_stopped(console: Console, outcome: Outcome, reason: str) -> None:
    """Runner.run raised the stop, the run block raised it, and the console agrees."""
    assert outcome.stop_from_runner is not None, f"the run returned {outcome.answer!r}"
    assert outcome.stop_from_runner.reason == reason
    assert outcome.stop_from_run is not None and outcome.stop_from_run.reason == reason
    record = console.run_record(outcome.run_id)
    assert (record["status"], record["stop_reason"]) == ("stopped", reason)


@pytest.mark.parametrize("mode", MODES)
def test_an_allowed_tool_runs_and_the_run_succeeds(console: Console, mode: str) -> None:
    outcome = run_agent(
        console, mode, [calls(("search_kb", {"query": "refunds"})), says("Refund sent.")]
    )

    assert outcome.stop_from_run is None and outcome.stop_from_runner is None
    assert outcome.answer == "Refund sent."
    assert outcome.ran == ["search_kb"]
    record = console.run_record(outcome.run_id)
    assert record["status"] == "succeeded"
    assert record["usage"]["tool_calls"] == 1
    assert record["usage"]["steps"] == 2
    assert record["usage"]["tokens"] == 120 + 15 + 200 + 30


@pytest.mark.parametrize("mode", MODES)
def test_a_denied_tool_stops_the_runner_despite_the_default_failure_handler(
    console: Console, mode: str
) -> None:
    outcome = run_agent(
        console, mode, [calls(("delete_db", {"name": "prod"})), says("All done, nothing to see.")]
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

    assert outcome.stop_from_runner is not None
    assert outcome.stop_from_runner.reason == "control_plane_unavailable"
    assert outcome.stop_from_run is not None
    assert outcome.model_calls == 0
    assert outcome.ran == []


# --- a console approval as the SDK's interruption, across a restart ---------------------------


@pytest.mark.parametrize("verdict", ["approve", "reject"])
def test_a_held_call_interrupts_the_run_and_resumes_from_the_saved_state(
    console: Console, verdict: str
) -> None:
    """The first process saves the SDK's RunState and goes; a reviewer decides; a second
    process (new gateway, agent, tools and model) resumes the same console run from the state."""
    ran: list[str] = []
    key = f"restart-{verdict}"
    email = ("send_email", {"to": "ann@example.com", "body": "Refunded."})

    async def first_process() -> tuple[int, str]:
        async with AsyncGateway(console.url, key=console.agent_key) as gateway:
            run = await gateway.run(
                "agents sdk restart", idempotency_key=key
            )  # no `with`: it lives on
            tools = governed_tools(run, make_tools(ran), interrupt=True)
            agent = Agent(name="support", model=ScriptedModel([calls(email)]), tools=tools)
            result = await Runner.run(agent, "Email Ann.", hooks=governed_hooks(run))
            assert [item.tool_name for item in result.interruptions] == ["send_email"]
            return run.id, result.to_state().to_string()

    async def second_process(saved: str) -> Outcome:
        outcome = Outcome()
        model = ScriptedModel([says("Emailed.")])
        async with AsyncGateway(console.url, key=console.agent_key) as gateway:
            try:
                async with gateway.run("agents sdk restart", idempotency_key=key) as run:
                    outcome.run_id = run.id
                    tools = governed_tools(run, make_tools(ran), interrupt=True)
                    agent = Agent(name="support", model=model, tools=tools)
                    state = await RunState.from_string(agent, saved)
                    assert approve_console_interruptions(state, agent.tools) == 1
                    try:
                        result = await Runner.run(agent, state, hooks=governed_hooks(run))
                    except Stop as stop:
                        outcome.stop_from_runner = stop
                    else:
                        outcome.answer = run.answer = result.final_output
            except Stop as stop:
                outcome.stop_from_run = stop
        return outcome

    run_id, saved = asyncio.run(first_process())
    assert ran == []
    assert console.run_record(run_id)["status"] in {"running", "waiting_approval"}
    console.decide_approval_later(run_id, verdict).join(timeout=30)

    outcome = asyncio.run(second_process(saved))

    record = console.run_record(run_id)
    if verdict == "approve":
        assert outcome.run_id == run_id
        assert outcome.stop_from_run is None, outcome.stop_from_run
        assert (outcome.answer, ran) == ("Emailed.", ["send_email"])
        assert (record["status"], record["usage"]["tool_calls"]) == ("succeeded", 1)
    else:
        # The rejection ended the run: resuming it says so, and the email is never sent.
        assert outcome.stop_from_run is not None
        assert outcome.stop_from_run.reason == "approval_rejected:send_email"
        assert ran == []
        assert (record["status"], record["stop_reason"]) == (
            "stopped",
            "approval_rejected:send_email",
        )
