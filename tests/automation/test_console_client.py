"""The automation client (``opsconsole_client.automation``) against the real console: the app
in-process (WSGI for ``Console``, ASGI for ``AsyncConsole``), the database real."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

from agents.models import Agent, AgentKey, PolicyVersion
from agents.policy.selectors import policy_current
from opsconsole.models import AuditEntry
from opsconsole_client.automation import AsyncConsole, Console, ConsoleError
from tests.automation.test_policy_api import STRICTER
from tests.conftest import JsonClient

# transaction=True: the app's own connection commits what the test then reads.
real_console = pytest.mark.django_db(transaction=True)


@pytest.fixture
def console(admin) -> Iterator[Console]:
    with Console(
        "http://testserver", admin.token, transport=httpx.WSGITransport(app=get_wsgi_application())
    ) as client:
        yield client


@real_console
def test_runs_iterates_every_keyset_page(console, fleet):
    assert [run["id"] for run in console.runs(page_size=2)] == fleet.newest_first
    stopped = list(console.runs(status="stopped", stop_reason="tool_denied"))
    assert [(run["id"], run["stop_reason"]) for run in stopped] == [
        (fleet.denied.pk, "tool_denied:db.drop")
    ]
    assert [run["id"] for run in console.runs(agent="other-bot", tool="kb.read")] == [
        fleet.other.pk
    ]


@real_console
def test_agents_and_keys_from_creation_to_revocation(console, db):
    created = console.agent_create("billing-bot", description="bills", tools=["kb.read"])
    assert (created["name"], created["keys"]) == ("billing-bot", [])
    issued = console.key_issue("billing-bot", label="prod")
    assert issued["key"].startswith("aok_")
    assert JsonClient(issued["key"]).post_json("/api/v1/runs", {"task": "t"}).status_code == 201
    assert [agent["name"] for agent in console.agents()] == ["billing-bot"]
    assert "key" not in console.agent("billing-bot")["keys"][0]

    disabled = console.agent_set_enabled("billing-bot", False, reason="rotating")
    assert disabled["enabled"] is False and not Agent.objects.get(name="billing-bot").enabled
    revoked = console.key_revoke(issued["id"])
    assert revoked["revoked_at"] is not None
    assert AgentKey.objects.get(pk=issued["id"]).revoked_at is not None
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"agent.create", "agent_key.issue", "agent.disable", "agent_key.revoke"} <= actions


@real_console
def test_policy_read_dry_run_and_publish(console, fleet):
    current = console.policy_current()
    dry_run = console.policy_dry_run(STRICTER)
    assert (dry_run["replayed"], dry_run["stopped"]) == (4, 2)
    published = console.policy_publish(STRICTER, "no kb", base_version=current["version"])
    assert published["version"] == current["version"] + 1 == policy_current().version
    assert PolicyVersion.objects.get(number=published["version"]).reason == "no kb"


@real_console
def test_errors_raise_with_their_code_and_status(console, oncall, db):
    current = console.policy_current()["version"]
    console.policy_publish(STRICTER, "first", base_version=current)
    with pytest.raises(ConsoleError) as stale:
        console.policy_publish(STRICTER, "second", base_version=current)
    assert (stale.value.status, stale.value.code) == (409, "policy_changed")

    with pytest.raises(ConsoleError) as invalid:
        console.policy_dry_run("tools: [unclosed")
    assert (invalid.value.status, invalid.value.code) == (400, "invalid_policy")
    assert isinstance(invalid.value.detail, list) and invalid.value.detail

    transport = httpx.WSGITransport(app=get_wsgi_application())
    with Console("http://testserver", oncall.token, transport=transport) as on_call:
        with pytest.raises(ConsoleError) as refused:
            on_call.agent_create("sneaky-bot")
        assert (refused.value.status, refused.value.code) == (403, "forbidden")
    assert not Agent.objects.filter(name="sneaky-bot").exists()

    nowhere = Console("http://127.0.0.1:9", "aou_nobody", timeout=2)
    with nowhere, pytest.raises(ConsoleError) as unreachable:
        nowhere.policy_current()
    assert (unreachable.value.status, unreachable.value.code) == (None, "unreachable")


@real_console
async def test_the_async_console_has_the_same_surface(admin, fleet):
    from asgiref.sync import sync_to_async

    transport = httpx.ASGITransport(app=get_asgi_application())
    async with AsyncConsole("http://testserver", admin.token, transport=transport) as console:
        ids = [run["id"] async for run in console.runs(page_size=2)]
        assert ids == fleet.newest_first
        await console.agent_create("async-bot")
        issued = await console.key_issue("async-bot")
        assert issued["key"].startswith("aok_")
        await console.agent_set_enabled("async-bot", False, reason="done")
        await console.key_revoke(issued["id"])
        current = await console.policy_current()
        dry_run = await console.policy_dry_run(STRICTER, limit=2)
        assert dry_run["replayed"] == 2
        published = await console.policy_publish(STRICTER, "async", current["version"])
        with pytest.raises(ConsoleError) as stale:
            await console.policy_publish(STRICTER, "again", current["version"])
        assert stale.value.code == "policy_changed"
        assert [a["name"] for a in await console.agents()] == [
            "async-bot",
            "other-bot",
            "support-bot",
        ]

    agent = await sync_to_async(Agent.objects.get)(name="async-bot")
    assert agent.enabled is False
    assert published["version"] == (await sync_to_async(policy_current)()).version
