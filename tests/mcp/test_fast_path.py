"""``tools/call`` through the gateway core (agents/gateway/core.py) on PostgreSQL: once a run is
known to the process, a plain allowed call is decided in two round trips and its result, validated
before the answer, recorded just after it (``Recording`` in agents/mcp/server.py), with the same
rows the slow path writes; everything else (and everything on SQLite) goes through the gateway's
services, whose tests are the rest of tests/mcp."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from agents.gateway import core
from agents.mcp import services
from agents.mcp.server import Recording
from agents.models import McpToolSeen, ToolBreaker, ToolCall, TraceEvent
from tests.gateway.test_core import outcomes  # the fast path's counters, by outcome
from tests.mcp.conftest import decision_of, mcp_client, text_of

ON_POSTGRESQL = connection.vendor == "postgresql"


def new_outcomes(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in outcomes().items() if v > before.get(k, 0)}


def test_calls_after_the_first_are_decided_and_recorded_by_the_core(console, agent, upstream):
    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            first = await client.call_tool("up.search", {"query": "a"})
            before = await sync_to_async(outcomes)()  # some collectors read the database
            more = [await client.call_tool("up.search", {"query": q}) for q in ("b", "c")]
            return first, more, await sync_to_async(new_outcomes)(before)

    first, more, counted = asyncio.run(scenario())
    assert [r.is_error for r in (first, *more)] == [False, False, False]
    # The first call starts the session's run (the slow path); the next two are the core's.
    assert counted == ({"served": 2} if ON_POSTGRESQL else {})
    calls = ToolCall.objects.filter(run_id=decision_of(first)["run_id"]).order_by("pk")
    assert [(c.tool, c.args, c.valid, c.result_ok) for c in calls] == [
        ("up.search", {"query": q}, True, True) for q in "abc"
    ]
    assert [c.output for c in calls][-1] == more[-1].structured_content
    # Each result is written after its answer, and before the run's next call is decided.
    events = TraceEvent.objects.filter(
        run_id=calls[0].run_id, kind__in=["tool_call", "tool_result"]
    )
    assert [(e.kind, e.data["tool_call_id"]) for e in events.order_by("pk")] == [
        (kind, c.pk) for c in calls for kind in ("tool_call", "tool_result")
    ]
    assert calls[0].run.tool_calls == 3


needs_the_core = pytest.mark.skipif(not ON_POSTGRESQL, reason="the gateway core is PostgreSQL's")


@needs_the_core
def test_the_answer_does_not_wait_for_its_record_but_the_next_call_does(
    console, agent, upstream, monkeypatch
):
    """The model gets a valid result before it is written; the run's next call is decided only
    once it is (its decision would otherwise be made without the result)."""
    gate = threading.Event()
    original = core.report_async

    async def held_report(report, now, **kwargs):
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return await original(report, now, **kwargs)

    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            await client.call_tool("up.search", {"query": "a"})  # the slow path starts the run
            monkeypatch.setattr(core, "report_async", held_report)
            answered = await client.call_tool("up.search", {"query": "b"})
            unrecorded = await sync_to_async(
                lambda: ToolCall.objects.get(args={"query": "b"}).reported_at
            )()
            second = asyncio.ensure_future(client.call_tool("up.search", {"query": "c"}))
            await asyncio.sleep(0.5)
            waited = not second.done()
            gate.set()
            return answered, unrecorded, waited, await second

    answered, unrecorded, waited, second = asyncio.run(scenario())
    assert answered.is_error is False and answered.structured_content["hits"]
    assert unrecorded is None  # answered, not yet written
    assert waited is True
    assert second.is_error is False
    b, c = ToolCall.objects.get(args={"query": "b"}), ToolCall.objects.get(args={"query": "c"})
    assert (b.result_ok, b.valid, b.output) == (True, True, answered.structured_content)
    assert b.reported_at < c.created_at
    assert [e["args"]["query"] for e in upstream.executed()] == ["a", "b", "c"]


@needs_the_core
def test_the_next_call_goes_on_once_the_record_holds_the_run_and_is_decided_after_it(
    console, agent, upstream, monkeypatch
):
    """The run's next call does not wait for the record's last round trip: once the record's
    checks passed and its transaction holds the run's row, the next decision is sent, and the
    database orders it after the record (it waits for the run's row)."""
    decided = []
    original_decide = core.decide_async

    async def noting_decide(*args, **kwargs):
        decided.append(args[0].args["query"])
        return await original_decide(*args, **kwargs)

    # The record's writes wait for this lock (they update the tool's breaker; its first round trip
    # only locks the breaker's row, and decisions do not write it).
    blocker = psycopg.connect(
        **{k: v for k, v in core._conninfo().items() if k != "autocommit"}, autocommit=False
    )

    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            await client.call_tool("up.search", {"query": "a"})  # the slow path starts the run
            monkeypatch.setattr(core, "decide_async", noting_decide)
            blocker.execute(f"LOCK TABLE {ToolBreaker._meta.db_table} IN SHARE MODE")
            answered = await client.call_tool("up.search", {"query": "b"})
            second = asyncio.ensure_future(client.call_tool("up.search", {"query": "c"}))
            for _ in range(200):  # the next decision is sent while the record is not written
                if "c" in decided:
                    break
                await asyncio.sleep(0.01)
            sent_early = "c" in decided
            await asyncio.sleep(0.2)
            waiting = not second.done()
            unwritten = await sync_to_async(
                lambda: ToolCall.objects.get(args={"query": "b"}).reported_at
            )()
            blocker.rollback()
            return answered, sent_early, waiting, unwritten, await second

    try:
        answered, sent_early, waiting, unwritten, second = asyncio.run(scenario())
    finally:
        blocker.close()
    assert sent_early and waiting and unwritten is None
    assert answered.is_error is False and second.is_error is False
    b, c = ToolCall.objects.get(args={"query": "b"}), ToolCall.objects.get(args={"query": "c"})
    assert b.reported_at is not None and b.reported_at < c.created_at
    events = TraceEvent.objects.filter(tool_call__in=[b, c]).order_by("pk")
    assert [(e.kind, e.tool_call_id) for e in events] == [
        ("tool_call", b.pk),
        ("tool_result", b.pk),
        ("tool_call", c.pk),
        ("tool_result", c.pk),
    ]
    assert [e["args"]["query"] for e in upstream.executed()] == ["a", "b", "c"]


@needs_the_core
def test_a_result_is_recorded_through_a_database_failure(console, agent, upstream, monkeypatch):
    """The core hands the record to the gateway's services, which are retried while the
    database fails: the result the model saw is kept."""
    attempts = []
    original = services.mcp_result_report

    async def core_down(report, now, **kwargs):
        raise core.Fallback("database")

    def flaky_report(**kwargs):
        attempts.append(kwargs["tool_call_id"])
        if len(attempts) == 1:
            from django.db import OperationalError

            raise OperationalError("the database went away")
        return original(**kwargs)

    async def scenario():
        async with mcp_client(console, agent.key, "stateless") as client:
            await client.list_tools()
            await client.call_tool("up.search", {"query": "a"})
            monkeypatch.setattr(core, "report_async", core_down)
            monkeypatch.setattr(services, "mcp_result_report", flaky_report)
            monkeypatch.setattr(Recording, "RETRY_SECONDS", (0.05, 0.05))
            return await client.call_tool("up.search", {"query": "b"})

    result = asyncio.run(scenario())
    assert result.is_error is False
    call = ToolCall.objects.get(args={"query": "b"})
    assert attempts == [call.pk, call.pk]
    assert (call.result_ok, call.valid, call.output) == (True, True, result.structured_content)


def test_a_definition_held_by_another_worker_is_denied_on_the_next_call(console, agent, upstream):
    """This process listed the tool unchanged; another worker saw it change upstream. The
    core's guard reads the pin in the decision's own statement: the call is refused."""

    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            allowed = await client.call_tool("up.search", {"query": "a"})
            await sync_to_async(
                lambda: McpToolSeen.objects.filter(tool="up.search").update(definition_hash="x")
            )()
            denied = await client.call_tool("up.search", {"query": "b"})
            return allowed, denied

    allowed, denied = asyncio.run(scenario())
    assert allowed.is_error is False
    assert denied.is_error is True and text_of(denied).startswith("REFUSED")
    assert decision_of(denied)["stop_reason"] == "tool_denied:up.search"
    assert "definition changed upstream" in decision_of(denied)["detail"]
    assert [c["args"] for c in upstream.executed()] == [{"query": "a"}]


def test_an_invalid_result_of_a_fast_decision_still_stops_the_run(console, agent, upstream):
    """The output schema is checked before the model sees the result, whichever path decided."""

    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            await client.call_tool("up.search", {"query": "a"})
            return await client.call_tool("up.dump", {})

    result = asyncio.run(scenario())
    assert result.is_error is True and text_of(result).startswith("STOPPED")
    assert decision_of(result)["stop_reason"] == "invalid_tool_output:up.dump"
    assert "x" * 100 not in text_of(result)
    call = ToolCall.objects.get(pk=decision_of(result)["tool_call_id"])
    assert (call.valid, call.output) == (False, None)


@pytest.mark.parametrize("era", ["handshake", "stateless"])
def test_a_key_revoked_mid_session_is_refused_on_the_next_request(console, agent, upstream, era):
    """A plain call of a key authenticated lately is verified by the core's decision itself; once
    the key is revoked the next call is answered 401 and nothing runs."""
    from agents.models import AgentKey
    from agents.registry.services import agent_key_revoke

    statuses: list[int] = []

    async def seen(response):
        if response.request.method == "POST":
            statuses.append(response.status_code)

    def revoke() -> None:
        for key in AgentKey.objects.filter(agent=agent.agent):
            agent_key_revoke(key_id=key.pk, actor="admin")

    async def scenario():
        async with mcp_client(console, agent.key, era, event_hooks={"response": [seen]}) as client:
            await client.list_tools()
            for query in ("a", "b"):
                assert (await client.call_tool("up.search", {"query": query})).is_error is False
            await sync_to_async(revoke)()
            await client.call_tool("up.search", {"query": "after"})

    with pytest.raises(BaseException):  # noqa: B017 - the SDK wraps the 401 in its own errors
        asyncio.run(scenario())
    assert statuses[-1] == 401
    assert [c["args"]["query"] for c in upstream.executed()] == ["a", "b"]
    assert ToolCall.objects.filter(args={"query": "after"}).count() == 0


def test_a_paused_agent_is_stopped_on_its_next_call(console, agent, upstream):
    from agents.registry.services import agent_pause

    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            for query in ("a", "b"):
                assert (await client.call_tool("up.search", {"query": query})).is_error is False
            await sync_to_async(agent_pause)(
                agent=agent.agent, actor="oncall", by="oncall", reason="incident"
            )
            return await client.call_tool("up.search", {"query": "after"})

    result = asyncio.run(scenario())
    assert result.is_error is True and text_of(result).startswith("STOPPED")
    assert decision_of(result)["stop_reason"] == "agent_disabled"
    assert [c["args"]["query"] for c in upstream.executed()] == ["a", "b"]


@needs_the_core
def test_a_plain_call_of_a_key_seen_lately_is_authenticated_by_the_decision(
    console, agent, upstream, monkeypatch
):
    """No statement of its own for the key: the core's decision reads it (a request that is not
    a plain call is authenticated afresh, as the tests above show)."""
    from agents.mcp import asgi

    authenticated = []
    original = asgi._authenticate

    async def counted(header):
        authenticated.append(header)
        return await original(header)

    monkeypatch.setattr(asgi, "_authenticate", counted)

    async def scenario():
        async with mcp_client(console, agent.key, "stateless") as client:
            await client.list_tools()
            await client.call_tool("up.search", {"query": "a"})  # the slow path starts the run
            before = len(authenticated)
            results = [await client.call_tool("up.search", {"query": q}) for q in "bcd"]
            return results, len(authenticated) - before

    results, afresh = asyncio.run(scenario())
    assert [r.is_error for r in results] == [False, False, False]
    assert afresh == 0
