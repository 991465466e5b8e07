"""Writes that wait for a reviewer through /mcp: held open (with progress) and woken by the
decision; after the hold a pending answer and an identical retry that executes once; never
executed after the host gave up; released by the kill switch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

from agents.models import Decision, KillSwitchMode, Run, RunStatus, ToolCall
from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide
from tests.mcp.conftest import decision_of, mcp_client, text_of

MESSAGE = {"to": "customer@example.com", "body": "Your refund is on its way."}


def when_pending(action: Callable[[ApprovalRequest], Any], after: float = 0.3) -> threading.Thread:
    """In another thread (as a reviewer's request would be): once a request is pending, wait
    ``after`` seconds and act on it."""

    def run() -> None:
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                request = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).first()
                if request is not None:
                    time.sleep(after)
                    action(request)
                    return
                time.sleep(0.05)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def approve(reviewer) -> Callable[[ApprovalRequest], Any]:
    return lambda request: approval_decide(
        request_id=request.pk, reviewer=reviewer.user, verdict="approve"
    )


@pytest.mark.parametrize("era", ["handshake", "stateless"])
def test_an_approval_within_the_hold_executes_the_write_once(
    console, agent, reviewer, upstream, era
):
    progress: list[str] = []

    async def on_progress(value, total, message):
        progress.append(message or "")

    async def scenario():
        async with mcp_client(console, agent.key, era) as client:
            await client.list_tools()
            return await client.call_tool("up.send", MESSAGE, progress_callback=on_progress)

    thread = when_pending(approve(reviewer))
    result = asyncio.run(scenario())
    thread.join()
    assert result.is_error is False, text_of(result)
    assert text_of(result) == "sent to customer@example.com"
    assert upstream.executed() == [{"tool": "send", "args": MESSAGE}]
    assert any("Waiting for human approval" in message for message in progress)
    request = ApprovalRequest.objects.get()
    assert request.status == ApprovalStatus.APPROVED and request.consumed_at is not None


def test_after_the_hold_the_model_is_told_to_retry_and_the_retry_executes_once(
    console, agent, reviewer, upstream
):
    async def call(client):
        return await client.call_tool("up.send", MESSAGE)

    async def first():
        headers = {"Opsconsole-Run": "mail-1", "Opsconsole-Hold-Seconds": "0.5"}
        async with mcp_client(console, agent.key, "stateless", headers=headers) as client:
            await client.list_tools()
            return await call(client)

    pending = asyncio.run(first())
    assert pending.is_error is True
    request = ApprovalRequest.objects.get()
    assert text_of(pending).startswith(
        f"APPROVAL_PENDING: a human must approve up.send (approval {request.pk}"
    )
    assert "Nothing was executed" in text_of(pending)
    assert decision_of(pending)["approval_id"] == request.pk
    assert upstream.executed() == []

    approval_decide(request_id=request.pk, reviewer=reviewer.user, verdict="approve")
    retried, again = asyncio.run(_two_calls(console, agent.key, MESSAGE))
    assert retried.is_error is False and text_of(retried) == "sent to customer@example.com"
    assert upstream.executed() == [{"tool": "send", "args": MESSAGE}]
    # The approval was used: the same arguments once more ask for a new one.
    assert again.is_error is True and text_of(again).startswith("APPROVAL_PENDING")
    assert ApprovalRequest.objects.count() == 2
    assert len(upstream.executed()) == 1


async def _two_calls(console, key, args):
    headers = {"Opsconsole-Run": "mail-1", "Opsconsole-Hold-Seconds": "0.3"}
    async with mcp_client(console, key, "stateless", headers=headers) as client:
        await client.list_tools()
        return await client.call_tool("up.send", args), await client.call_tool("up.send", args)


def test_other_arguments_do_not_use_an_approval(console, agent, reviewer, upstream):
    headers = {"Opsconsole-Run": "mail-2", "Opsconsole-Hold-Seconds": "0.3"}

    async def call(args):
        async with mcp_client(console, agent.key, "stateless", headers=headers) as client:
            await client.list_tools()
            return await client.call_tool("up.send", args)

    asyncio.run(call(MESSAGE))
    request = ApprovalRequest.objects.get()
    approval_decide(request_id=request.pk, reviewer=reviewer.user, verdict="approve")
    other = asyncio.run(call({**MESSAGE, "to": "someone-else@example.com"}))
    assert text_of(other).startswith("APPROVAL_PENDING")
    assert upstream.executed() == []


def test_a_rejection_stops_the_run_and_nothing_runs(console, agent, reviewer, upstream):
    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            return await client.call_tool("up.send", MESSAGE)

    thread = when_pending(
        lambda request: approval_decide(
            request_id=request.pk, reviewer=reviewer.user, verdict="reject", comment="no"
        )
    )
    result = asyncio.run(scenario())
    thread.join()
    assert result.is_error is True and text_of(result).startswith("STOPPED")
    assert decision_of(result)["stop_reason"] == "approval_rejected:up.send"
    assert upstream.executed() == []
    assert Run.objects.get().status == RunStatus.STOPPED


def approve_the_pending_request(reviewer) -> None:
    """The reviewer approves the one pending request (from another thread, as a request would)."""
    try:
        request = ApprovalRequest.objects.get(status=ApprovalStatus.PENDING)
        approval_decide(request_id=request.pk, reviewer=reviewer.user, verdict="approve")
    finally:
        connections.close_all()


@pytest.mark.parametrize("era", ["handshake", "stateless"])
def test_a_host_that_gave_up_during_the_hold_never_gets_the_write_executed(
    console, agent, reviewer, upstream, era
):
    """The host's client times out and drops the call's request (a plain call: answered with
    JSON, its handler not cancelled by the SDK); its session, if any, stays open."""

    async def scenario():
        # The host's own timeout (1.5 s) is shorter than the console's hold (20 s); its session
        # stays open while the reviewer approves after it gave up.
        async with mcp_client(console, agent.key, era, read_timeout=1.5) as client:
            await client.list_tools()
            try:
                await client.call_tool("up.send", MESSAGE)
            except Exception as exc:  # noqa: BLE001 - the SDK's timeout error
                gave_up = exc
            await asyncio.to_thread(approve_the_pending_request, reviewer)
            await asyncio.sleep(1.5)  # had the held call survived, it would have run by now
            return gave_up

    assert asyncio.run(scenario()) is not None  # the host gave up
    assert upstream.executed() == []
    request = ApprovalRequest.objects.get()
    assert request.status == ApprovalStatus.APPROVED
    assert request.consumed_at is None  # still there for an identical retry


@pytest.mark.parametrize("mode", [KillSwitchMode.STOP_ALL, KillSwitchMode.DISABLE_WRITES])
def test_the_kill_switch_releases_a_held_call_with_a_stop(console, agent, admin, upstream, mode):
    from agents.policy.services import kill_switch_set

    async def scenario():
        async with mcp_client(console, agent.key, "handshake") as client:
            await client.list_tools()
            return await client.call_tool("up.send", MESSAGE)

    thread = when_pending(lambda _: kill_switch_set(mode=mode, reason="incident", actor="ada"))
    started = time.monotonic()
    result = asyncio.run(scenario())
    thread.join()
    assert time.monotonic() - started < 15  # released, not held to the end of its hold
    assert result.is_error is True and decision_of(result)["stop_reason"] == "kill_switch"
    assert upstream.executed() == []
    call = ToolCall.objects.get(tool="up.send")
    assert call.decision == Decision.STOP
    assert call.run.status == RunStatus.STOPPED


@pytest.mark.parametrize("containment", ["pause", "degrade"])
def test_a_paused_agent_or_a_degraded_tool_releases_a_held_call(
    console, agent, upstream, containment
):
    from agents.registry.services import agent_pause
    from agents.tools.services import tool_degrade

    def contain(_request):
        if containment == "pause":
            agent_pause(agent=agent.agent, actor="olivia", by="olivia", reason="runaway")
        else:
            tool_degrade(tool="up.send", minutes=5, reason="vendor down", actor="olivia")

    async def scenario():
        async with mcp_client(console, agent.key, "stateless") as client:
            await client.list_tools()
            return await client.call_tool("up.send", MESSAGE)

    thread = when_pending(contain)
    result = asyncio.run(scenario())
    thread.join()
    expected = "agent_disabled" if containment == "pause" else "tool_degraded:up.send"
    assert result.is_error is True and decision_of(result)["stop_reason"] == expected
    assert upstream.executed() == []
    assert Run.objects.get().status == RunStatus.STOPPED


@pytest.mark.parametrize(
    ("progress", "filler"),
    [(False, 0), (True, 0), (False, 70_000)],
    ids=["json-answer", "sse-answer", "sse-answer-large-body"],
)
def test_a_host_that_dropped_the_connection_during_the_hold_never_gets_the_write_executed(
    console, agent, reviewer, upstream, progress, filler
):
    """Handshake era, the host's connection gone without a word (no cancellation), its session
    still open: the reviewer's later approval executes nothing (a body too large to be read
    ahead is answered on SSE and watched all the same)."""
    import httpx

    headers = {
        "Authorization": f"Bearer {agent.key}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw-host", "version": "1"},
        },
    }
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "up.send",
            "arguments": MESSAGE,
            **({"_meta": {"progressToken": "p1"}} if progress else {}),
            **({"_meta": {"opsconsole/filler": "x" * filler}} if filler else {}),
        },
    }

    async def scenario():
        async with httpx.AsyncClient(headers=headers, timeout=10) as http:
            opened = await http.post(console.url, json=hello)
            session = {
                "Mcp-Session-Id": opened.headers["mcp-session-id"],
                "Mcp-Protocol-Version": "2025-11-25",
            }
            await http.post(
                console.url,
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers=session,
            )
            async with httpx.AsyncClient(headers={**headers, **session}) as doomed:
                with pytest.raises(httpx.TimeoutException):
                    await doomed.post(console.url, json=call, timeout=1.0)  # then closed
            await asyncio.to_thread(approve_the_pending_request, reviewer)
            await asyncio.sleep(2.0)  # had the held call survived, it would have run by now
            await http.delete(console.url, headers=session)

    asyncio.run(scenario())
    assert upstream.executed() == []
    request = ApprovalRequest.objects.get()
    assert (request.status, request.consumed_at) == (ApprovalStatus.APPROVED, None)
