"""The asyncio client: the same surface as the blocking one, and it never blocks the event loop,
approval waits included."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from opsconsole_client import AsyncGateway, Budgets, Stop
from tests.client.conftest import Impl
from tests.client.scripted import pending_json, tool_call_json

EMAIL = {"to": "customer@example.com", "subject": "Your refund", "body": "It is on its way."}


class Ticker:
    """Another task on the loop: it counts while it gets to run."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.005)


async def test_an_approval_wait_leaves_the_event_loop_free(scripted):
    ticker = Ticker()
    seen_at_polls: list[int] = []
    expires = datetime.now(UTC) + timedelta(minutes=2)
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        200, json=pending_json(expires)
    )

    async def long_poll(request: httpx.Request) -> httpx.Response:
        seen_at_polls.append(ticker.ticks)
        await asyncio.sleep(0.05)  # the server holds the poll until a reviewer decides
        if len(seen_at_polls) < 3:
            return httpx.Response(200, json=pending_json(expires))
        return httpx.Response(200, json=tool_call_json(decision="allow", tool="email.send"))

    scripted.routes["GET /api/v1/tool-calls/11"] = long_poll
    send = Impl(output={"message_id": "m-1"})
    ticking = asyncio.create_task(ticker.run())
    try:
        async with scripted.async_gateway().run("tell the customer") as run:
            assert await run.tool("email.send", EMAIL, send) == {"message_id": "m-1"}
    finally:
        ticking.cancel()

    assert send.calls == [EMAIL]
    assert len(seen_at_polls) == 3
    # The other task kept running between the polls, while the client waited.
    assert seen_at_polls[0] < seen_at_polls[1] < seen_at_polls[2]
    assert run.stop_reason == "ok"


async def test_async_tools_may_be_coroutine_functions(scripted):
    async def search(args):
        await asyncio.sleep(0)
        return {"hits": [args["q"]]}

    async with scripted.async_gateway().run("task") as run:
        assert await run.tool("search.read", {"q": "x"}, search, call_id="call_9") == {
            "hits": ["x"]
        }

    (asked,) = scripted.sent("POST /api/v1/runs/7/tool-calls")
    assert asked["idempotency_key"] == "call:7:call_9"


async def test_a_run_can_be_awaited_without_a_block(scripted):
    run = await scripted.async_gateway().run("task", budgets=Budgets(max_steps=3))
    await run.finish("done")

    (created,) = scripted.sent("POST /api/v1/runs")
    assert created["budgets"] == {"max_steps": 3, "max_seconds": 90, "max_tool_calls": 15}
    assert run.stop_reason == "ok"


async def test_an_async_429_waits_without_blocking(scripted):
    answers = [
        httpx.Response(
            429, json={"error": "rate_limited", "detail": ""}, headers={"Retry-After": "2"}
        )
    ]
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: (
        answers.pop() if answers else httpx.Response(200, json=tool_call_json())
    )

    async with scripted.async_gateway().run("task") as run:
        await run.tool("search.read", {"q": "x"}, Impl())

    assert scripted.sleeps == [2.0]


# --- against the real gateway, served in the same event loop (ASGI) ---------------------------

real_gateway = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def asgi_transport():
    """The console's ASGI app in this loop; the database connections its threads opened are
    closed afterwards, so the test database can be dropped."""
    from asgiref.sync import sync_to_async
    from django.core.asgi import get_asgi_application
    from django.db import connections

    yield httpx.ASGITransport(app=get_asgi_application())
    await sync_to_async(connections.close_all)()


EMAIL_POLICY = """
tools:
  allow: ["search.read", "kb.read", "http.get", "email.send"]
  definitions:
    email.send:
      effect: write
      approval: {required: true, timeout_seconds: 120}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}
writes: {require_approval: true}
"""


@real_gateway
async def test_the_async_client_waits_for_a_reviewer_while_the_loop_keeps_serving(
    agent, reviewer, publish_policy, asgi_transport
):
    """The console's own ASGI app runs in this loop: if the client blocked it while waiting for
    the approval, nothing else could run, neither the ticker nor the reviewer's decision."""
    from asgiref.sync import sync_to_async

    from approvals.models import ApprovalRequest
    from approvals.services import approval_decide

    await sync_to_async(publish_policy)(EMAIL_POLICY)
    ticker = Ticker()
    ticking = asyncio.create_task(ticker.run())
    ticks_when_pending: list[int] = []

    def pending_request():
        return ApprovalRequest.objects.filter(status="pending").first()

    async def review() -> None:
        while (request := await sync_to_async(pending_request)()) is None:
            await asyncio.sleep(0.02)
        ticks_when_pending.append(ticker.ticks)
        await asyncio.sleep(0.3)  # the agent is now in its long poll
        ticks_when_pending.append(ticker.ticks)
        await sync_to_async(approval_decide)(
            request_id=request.pk, reviewer=reviewer.user, verdict="approve", comment="ok"
        )

    send = Impl(output={"message_id": "m-1"})
    transport = asgi_transport
    reviewing = asyncio.create_task(review())
    try:
        async with (
            AsyncGateway("http://testserver", agent.key, transport=transport) as gateway,
            gateway.run("tell the customer") as run,
        ):
            output = await asyncio.wait_for(run.tool("email.send", EMAIL, send), timeout=30)
        await reviewing
    finally:
        ticking.cancel()
        reviewing.cancel()

    assert output == {"message_id": "m-1"}
    assert send.calls == [EMAIL]
    assert ticks_when_pending[1] > ticks_when_pending[0]
    assert run.stop_reason == "ok"


@real_gateway
async def test_the_async_gate_refuses_the_call_past_max_steps(agent, asgi_transport):
    transport = asgi_transport
    calls = 0
    with pytest.raises(Stop) as stopped:
        async with (
            AsyncGateway("http://testserver", agent.key, transport=transport) as gateway,
            gateway.run("task", budgets=Budgets(max_steps=2)) as run,
        ):
            for _ in range(5):
                ticket = await run.gate(model="m")
                calls += 1
                await run.usage(ticket, tokens_in=10)

    assert stopped.value.reason == "max_steps"
    assert calls == 2
