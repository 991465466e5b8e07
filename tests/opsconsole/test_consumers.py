"""The console's websocket: session-authenticated, role-checked, coalescing bursts."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.test import Client

from agents.policy.services import kill_switch_set
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from opsconsole.consumers import COALESCE_SECONDS, parse_topics
from opsconsole.routing import websocket_urlpatterns

# The same stack as opsconsole/asgi.py, without importing it (it may start the scheduler).
application = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

pytestmark = pytest.mark.django_db(transaction=True)

WRITE_POLICY = """
tools:
  allow: ["kb.read", "email.send"]
writes: {require_approval: true, timeout_seconds: 900}
"""


@database_sync_to_async
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def open_socket(person, topics: str, origin: bytes = b"http://localhost"):
    headers = [(b"origin", origin)]
    if person is not None:
        headers.append((b"cookie", f"sessionid={await session_cookie(person.user)}".encode()))
    communicator = WebsocketCommunicator(application, f"/ws/live/?topics={topics}", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def next_event(communicator, event: str, timeout: float = 2.0) -> dict:
    """The next message of one kind (others, such as the greeting, are skipped)."""
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        if message["event"] == event:
            return message["payload"]


def test_topics_are_parsed_and_unknown_ones_dropped():
    assert parse_topics(b"topics=runs,run.12,secrets,run.x,approvals,runs") == [
        "runs",
        "run.12",
        "approvals",
    ]


async def test_a_budget_update_reaches_the_runs_page(oncall, agent, start_run):
    run = await sync_to_async(start_run)()
    page, connected, _ = await open_socket(oncall, f"run.{run['id']},killswitch")
    assert connected
    hello = await next_event(page, "hello")
    assert hello["topics"] == [f"run.{run['id']}", "killswitch"]

    await sync_to_async(agent.api.post_json)(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": "x"}}
    )
    update = await next_event(page, "run.updated")
    assert update["id"] == run["id"]
    assert update["usage"]["tool_calls"] == 1
    assert update["budgets"]["max_tool_calls"] == 15
    await page.disconnect()


async def test_an_approval_decided_elsewhere_reaches_every_open_queue(
    oncall, reviewer, second_reviewer, agent, start_run, publish_policy
):
    await sync_to_async(publish_policy)(WRITE_POLICY)
    run = await sync_to_async(start_run)()
    answer = await sync_to_async(agent.api.post_json)(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {"to": "a"}}
    )
    request_id = await database_sync_to_async(
        lambda: ApprovalRequest.objects.get(tool_call_id=answer.json()["id"]).pk
    )()
    queues = []
    for person in (oncall, reviewer):
        socket, connected, _ = await open_socket(person, "approvals,killswitch")
        assert connected
        await next_event(socket, "hello")
        queues.append(socket)

    await database_sync_to_async(approval_decide)(
        request_id=request_id, reviewer=second_reviewer.user, verdict="approve"
    )
    for socket in queues:
        removed = await next_event(socket, "approvals.removed")
        assert removed["ids"] == [request_id]
        assert removed["status"] == "approved"
        await socket.disconnect()


async def test_a_new_request_is_announced_to_open_queues(
    reviewer, agent, start_run, publish_policy
):
    await sync_to_async(publish_policy)(WRITE_POLICY)
    run = await sync_to_async(start_run)()
    queue, _, _ = await open_socket(reviewer, "approvals")
    await next_event(queue, "hello")
    await sync_to_async(agent.api.post_json)(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {}}
    )
    added = await next_event(queue, "approvals.added")
    assert "id" in added or "ids" in added
    await queue.disconnect()


async def test_the_kill_switch_reaches_every_page(oncall, admin):
    page, _, _ = await open_socket(oncall, "runs,killswitch")
    await next_event(page, "hello")
    await database_sync_to_async(kill_switch_set)(
        mode="disable_writes", reason="vendor outage", actor="user:ada-admin"
    )
    payload = await next_event(page, "killswitch.changed")
    assert (payload["mode"], payload["reason"]) == ("disable_writes", "vendor outage")
    await page.disconnect()


async def test_a_person_without_a_role_is_refused_and_receives_nothing(outsider):
    socket, connected, code = await open_socket(outsider, "runs,approvals,killswitch")
    assert not connected
    assert code == 4403


async def test_an_anonymous_socket_is_refused(db):
    socket, connected, code = await open_socket(None, "runs,killswitch")
    assert not connected
    assert code == 4403


async def test_a_foreign_origin_is_refused(oncall):
    socket, connected, _ = await open_socket(oncall, "runs", origin=b"http://evil.example")
    assert not connected


async def test_a_page_hears_only_the_topics_it_follows(oncall, agent, start_run):
    watched = await sync_to_async(start_run)(task="watched")
    other = await sync_to_async(start_run)(task="other")
    page, _, _ = await open_socket(oncall, f"run.{watched['id']},secrets")
    hello = await next_event(page, "hello")
    assert hello["topics"] == [f"run.{watched['id']}"]
    await sync_to_async(agent.api.post_json)(
        f"/api/v1/runs/{other['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    )
    assert await page.receive_nothing(timeout=0.4)
    await page.disconnect()


async def test_a_burst_of_updates_is_coalesced_to_the_latest(oncall):
    page, _, _ = await open_socket(oncall, "run.77")
    await next_event(page, "hello")
    layer = get_channel_layer()
    started = time.monotonic()
    for calls in range(1, 51):
        await layer.group_send(
            "run.77",
            {
                "type": "live.event",
                "event": "run.updated",
                "payload": {"id": 77, "status": "running", "usage": {"tool_calls": calls}},
            },
        )
    sending = time.monotonic() - started
    first = await next_event(page, "run.updated")
    assert first["usage"]["tool_calls"] == 1  # the leading edge goes out at once
    # Then at most one message per window, each the latest state at its flush, ending at 50.
    # (With the Redis layer on a busy machine the 50 sends can span several windows.)
    seen = [first["usage"]["tool_calls"]]
    first_at = time.monotonic()
    while seen[-1] != 50:
        event = await next_event(page, "run.updated", timeout=COALESCE_SECONDS * 4)
        seen.append(event["usage"]["tool_calls"])
    spread = time.monotonic() - first_at
    assert seen == sorted(seen)
    # One message per window at most over the time the burst took to send and to arrive.
    assert len(seen) <= 2 + int((sending + spread) / COALESCE_SECONDS), (seen, spread, sending)
    assert len(seen) < 10  # not 50 messages
    assert await page.receive_nothing(timeout=COALESCE_SECONDS * 2)
    await page.disconnect()


async def test_approval_events_in_a_burst_merge_their_ids(reviewer):
    queue, _, _ = await open_socket(reviewer, "approvals")
    await next_event(queue, "hello")
    layer = get_channel_layer()
    for ident in (1, 2, 3):
        await layer.group_send(
            "approvals",
            {"type": "live.event", "event": "approvals.removed", "payload": {"ids": [ident]}},
        )
    first = await next_event(queue, "approvals.removed")
    rest = await next_event(queue, "approvals.removed", timeout=COALESCE_SECONDS * 4)
    assert first["ids"] + rest["ids"] == [1, 2, 3]
    await queue.disconnect()


async def test_a_ping_is_answered(oncall):
    page, _, _ = await open_socket(oncall, "killswitch")
    await next_event(page, "hello")
    await page.send_json_to({"type": "ping"})
    assert await next_event(page, "pong") == {}
    await page.disconnect()


async def test_a_published_policy_reaches_open_policy_pages(oncall, publish_policy):
    page, connected, _ = await open_socket(oncall, "policy,breakers,killswitch")
    assert connected
    assert (await next_event(page, "hello"))["topics"] == ["policy", "breakers", "killswitch"]

    version = await sync_to_async(publish_policy)('tools: {allow: ["kb.read"]}')

    changed = await next_event(page, "policy.changed")
    assert changed["version"] == version.number
    assert changed["author"]
    await page.disconnect()


async def test_agent_changes_reach_admins_agents_pages_and_nobody_else(admin, oncall, agent):
    from agents.models import Agent
    from agents.registry.services import agent_set_enabled

    page, connected, _ = await open_socket(admin, "agents,killswitch")
    assert connected
    assert (await next_event(page, "hello"))["topics"] == ["agents", "killswitch"]
    # On-call people do not see the agents admin page, so they may not follow it either.
    other, connected, _ = await open_socket(oncall, "agents,killswitch")
    assert connected
    assert (await next_event(other, "hello"))["topics"] == ["killswitch"]

    await database_sync_to_async(
        lambda: agent_set_enabled(
            agent=Agent.objects.get(pk=agent.agent.pk), enabled=False, actor="user:ada"
        )
    )()

    assert (await next_event(page, "agents.changed"))["name"] == agent.agent.name
    assert await other.receive_nothing(timeout=0.5)
    await page.disconnect()
    await other.disconnect()
