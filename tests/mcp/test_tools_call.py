"""tools/list and tools/call through the console's /mcp, with the official SDK's client in both
protocol eras against a real upstream MCP server: decided by the gateway, recorded in the same
run, trace and audit as an HTTP agent's calls."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from agents.models import Decision, Run, RunStatus, ToolCall
from tests.mcp.conftest import decision_of, mcp_client, text_of

ERAS = ["handshake", "stateless"]


def run_of(tool_call_id: int) -> Run:
    return ToolCall.objects.select_related("run").get(pk=tool_call_id).run


async def run_while_open(result) -> Run:
    """The call's run read while the session is still open: a handshake session's run ends
    (succeeded) as soon as the host closes it, so its state mid-session is read in the session."""
    return await sync_to_async(run_of)(decision_of(result)["tool_call_id"])


@pytest.mark.parametrize("era", ERAS)
def test_tools_list_shows_the_agent_only_what_it_may_call(console, agent, era):
    async def scenario():
        async with mcp_client(console, agent.key, era) as client:
            return await client.list_tools()

    listed = asyncio.run(scenario())
    by_name = {tool.name: tool for tool in listed.tools}
    # admin_reset is served upstream but not on the allowlist: the model never sees it.
    assert set(by_name) == {"up.search", "up.send", "up.dump"}
    # The console's classification is re-emitted, whatever the upstream hinted.
    assert by_name["up.search"].annotations.read_only_hint is True
    assert by_name["up.send"].annotations.read_only_hint is False
    assert by_name["up.send"].meta["opsconsole/approval"] is True


@pytest.mark.parametrize("era", ERAS)
def test_an_allowed_read_runs_upstream_and_is_recorded(console, agent, upstream, era):
    async def scenario():
        async with mcp_client(console, agent.key, era) as client:
            await client.list_tools()
            result = await client.call_tool("up.search", {"query": "refunds"})
            return result, await run_while_open(result)

    result, run = asyncio.run(scenario())
    assert result.is_error is False
    assert result.structured_content == {"hits": ["refunds-0", "refunds-1", "refunds-2"]}
    decision = decision_of(result)
    assert decision["decision"] == Decision.ALLOW
    call = ToolCall.objects.get(pk=decision["tool_call_id"])
    assert (call.tool, call.args, call.valid) == ("up.search", {"query": "refunds"}, True)
    assert call.run_id == run.pk
    assert run.tool_calls == 1 and run.status == RunStatus.RUNNING
    assert run.metadata["front_door"] == "mcp"
    assert upstream.executed() == [{"tool": "search", "args": {"query": "refunds"}}]


@pytest.mark.parametrize("era", ERAS)
def test_a_denied_tool_refuses_that_call_and_the_session_goes_on(console, agent, upstream, era):
    async def scenario():
        async with mcp_client(console, agent.key, era) as client:
            await client.list_tools()
            denied = await client.call_tool("up.admin_reset", {})
            after = await client.call_tool("up.search", {"query": "next"})
            return denied, after, await run_while_open(after)

    denied, after, run = asyncio.run(scenario())
    assert denied.is_error is True
    assert text_of(denied).startswith("REFUSED")
    assert decision_of(denied)["stop_reason"] == "tool_denied:up.admin_reset"
    assert decision_of(denied)["decision"] == Decision.REFUSED
    assert after.is_error is False
    assert run.status == RunStatus.RUNNING and run.tool_calls == 1  # the refusal is not counted
    assert [c["tool"] for c in upstream.executed()] == ["search"]


@pytest.mark.parametrize("era", ERAS)
def test_invalid_arguments_are_refused_with_what_is_wrong(console, agent, upstream, era):
    async def scenario():
        async with mcp_client(console, agent.key, era) as client:
            await client.list_tools()
            return await client.call_tool("up.search", {"query": 5})

    result = asyncio.run(scenario())
    assert result.is_error is True
    assert decision_of(result)["stop_reason"] == "invalid_tool_args:up.search"
    assert "query" in text_of(result)
    assert upstream.executed() == []


def test_the_refusal_past_max_refusals_stops_the_run(console, agent, upstream):
    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            return [await client.call_tool("up.admin_reset", {}) for _ in range(4)]

    results = asyncio.run(scenario())
    assert [decision_of(r)["decision"] for r in results] == ["refused"] * 3 + ["stop"]
    assert text_of(results[-1]).startswith("STOPPED")
    run = run_of(decision_of(results[-1])["tool_call_id"])
    assert (run.status, run.stop_reason) == (RunStatus.STOPPED, "tool_denied:up.admin_reset")


def test_a_budget_stop_ends_the_run_and_every_later_call(console, agent, upstream):
    async def scenario():
        async with mcp_client(console, agent.key, "stateless") as client:
            await client.list_tools()
            return [await client.call_tool("up.search", {"query": f"q{n}"}) for n in range(8)]

    results = asyncio.run(scenario())
    assert [r.is_error for r in results] == [False] * 6 + [True, True]
    assert decision_of(results[6])["stop_reason"] == "max_tool_calls"
    assert decision_of(results[7])["stop_reason"] == "max_tool_calls"
    assert len(upstream.executed()) == 6


def test_each_handshake_session_is_its_own_run(console, agent):
    async def one_session():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            result = await client.call_tool("up.search", {"query": "a"})
            return decision_of(result)["run_id"]

    first, second = asyncio.run(one_session()), asyncio.run(one_session())
    assert first != second
    assert Run.objects.filter(agent=agent.agent).count() == 2
    # A session the host closed ends its run (ok), whenever the console gets to it.
    deadline = time.monotonic() + 20
    while Run.objects.filter(pk=first, status=RunStatus.RUNNING).exists():
        assert time.monotonic() < deadline, "the closed session's run is still running"
        time.sleep(0.1)
    assert Run.objects.get(pk=first).stop_reason == "ok"


def test_a_stateless_client_names_its_run_with_a_header(console, agent):
    async def call(run_name):
        headers = {"Opsconsole-Run": run_name}
        async with mcp_client(console, agent.key, "stateless", headers=headers) as client:
            await client.list_tools()
            result = await client.call_tool("up.search", {"query": "a"})
            return decision_of(result)["run_id"]

    first, again, other = (asyncio.run(call(n)) for n in ("ticket-1", "ticket-1", "ticket-2"))
    assert first == again != other
    assert Run.objects.get(pk=first).task == "MCP: ticket-1"


def test_an_outputs_size_cap_holds_the_result_back(console, agent, upstream):
    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            return await client.call_tool("up.dump", {})

    result = asyncio.run(scenario())
    assert result.is_error is True
    assert "x" * 100 not in text_of(result)  # the model never sees the oversized output
    assert decision_of(result)["stop_reason"] == "invalid_tool_output:up.dump"


def test_a_bad_key_is_a_401_and_nothing_is_decided(console, upstream):
    async def scenario():
        async with mcp_client(console, "aok_not-a-key", "stateless") as client:
            await client.list_tools()

    with pytest.raises(BaseException):  # noqa: B017 - the SDK wraps the 401 in its own errors
        asyncio.run(scenario())
    assert ToolCall.objects.count() == 0


@pytest.mark.parametrize("era", ERAS)
def test_an_unknown_server_is_a_protocol_error(console, agent, era):
    from mcp.shared.exceptions import MCPError

    async def scenario():
        async with mcp_client(console, agent.key, era) as client:
            try:
                await client.call_tool("nowhere.tool", {})
            except MCPError as exc:
                return exc

    error = asyncio.run(scenario())
    assert isinstance(error, MCPError) and "Unknown tool" in str(error)
    assert ToolCall.objects.count() == 0


def test_arguments_over_the_gateways_cap_are_a_protocol_error(console, agent, upstream, settings):
    from mcp.shared.exceptions import MCPError

    settings.OPSCONSOLE_MAX_ARGS_BYTES = 100

    async def scenario():
        async with mcp_client(console, agent.key, "stateless") as client:
            try:
                await client.call_tool("up.search", {"query": "x" * 200})
            except MCPError as exc:
                return exc

    error = asyncio.run(scenario())
    assert isinstance(error, MCPError) and "over the cap of 100" in str(error)
    assert ToolCall.objects.count() == 0 and upstream.executed() == []


@pytest.mark.parametrize("era", ERAS)
def test_the_agents_tool_call_rate_holds_over_mcp_too(
    console, agent, upstream, settings, era, rate_clock
):
    """The same per-agent windows as its HTTP calls: over the rate, a call is refused with how
    long to wait, nothing runs and the session and run go on."""
    settings.OPSCONSOLE_RATE_LIMITS = {**settings.OPSCONSOLE_RATE_LIMITS, "tool_calls": "2/min"}

    async def scenario():
        async with mcp_client(console, agent.key, era) as client:
            await client.list_tools()
            return [await client.call_tool("up.search", {"query": q}) for q in "abc"]

    results = asyncio.run(scenario())
    assert [r.is_error for r in results] == [False, False, True]
    assert text_of(results[2]).startswith("RATE_LIMITED")
    meta = decision_of(results[2])
    assert meta["error"] == "rate_limited" and 1 <= meta["retry_after_seconds"] <= 60
    assert [c["args"]["query"] for c in upstream.executed()] == ["a", "b"]
    run = Run.objects.get(pk=decision_of(results[0])["run_id"])
    assert run.tool_calls == 2 and ToolCall.objects.filter(run=run).count() == 2


def test_a_stateless_call_whose_param_header_disagrees_is_rejected(console, agent, upstream):
    """2026-07-28: a tool's ``x-mcp-header`` arguments travel as ``Mcp-Param-*`` headers too, for
    intermediaries to route on; the SDK checks they agree with the body, with the schema the
    upstream listed (the console's lookup), and a call that disagrees is not run."""

    async def tamper(request):
        if "mcp-param-query" in request.headers:
            request.headers["mcp-param-query"] = "something else"

    async def scenario():
        async with mcp_client(console, agent.key, "stateless") as client:
            await client.list_tools()
            honest = await client.call_tool("up.search", {"query": "a"})
        async with mcp_client(
            console, agent.key, "stateless", event_hooks={"request": [tamper]}
        ) as client:
            await client.list_tools()
            try:
                await client.call_tool("up.search", {"query": "b"})
            except Exception as exc:  # noqa: BLE001 - the SDK raises the rejection
                return honest, exc
            return honest, None

    honest, rejected = asyncio.run(scenario())
    assert honest.is_error is False
    assert rejected is not None and "Mcp-Param-Query" in str(rejected)
    assert [c["args"]["query"] for c in upstream.executed()] == ["a"]


def test_a_handshake_call_is_answered_with_json_unless_it_asked_for_progress(
    console, agent, upstream
):
    """The handshake era's answers: a plain call in one JSON body (the cheaper answer), a call
    with a progress token on an SSE stream that can carry its progress."""
    answers: list[str] = []

    async def seen(response):
        if response.request.method == "POST":
            answers.append(response.headers.get("content-type", "").split(";")[0])

    async def progress(progress, total, message):
        pass

    async def scenario():
        async with mcp_client(
            console, agent.key, "handshake", event_hooks={"response": [seen]}
        ) as client:
            await client.list_tools()
            answers.clear()
            plain = await client.call_tool("up.search", {"query": "a"})
            with_progress = await client.call_tool(
                "up.search", {"query": "b"}, progress_callback=progress
            )
            return plain, with_progress

    plain, with_progress = asyncio.run(scenario())
    assert (plain.is_error, with_progress.is_error) == (False, False)
    assert plain.structured_content["hits"] and with_progress.structured_content["hits"]
    assert answers == ["application/json", "text/event-stream"]
