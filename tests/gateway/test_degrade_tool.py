"""On-call degrades a tool now: its breaker is forced open for a while, so every agent's calls of
it stop with ``tool_degraded:<tool>`` until the time is up or someone lifts it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import ToolBreaker, ToolCall
from opsconsole.models import AuditEntry, WebhookDelivery, WebhookEndpoint
from tests.conftest import logged_in, make_agent

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "browser.open"]
  definitions:
    browser.open: {effect: read, expensive: true, cost_usd: 0.7}
budgets: {max_tool_calls: 50, max_steps: 50, max_seconds: 600}
"""


@pytest.fixture
def world(publish_policy, agent):
    publish_policy(POLICY)
    WebhookEndpoint.objects.create(
        name="pager", url="https://hooks.example.com/x", secret="s", events=[]
    )
    return {"agents": [agent, make_agent("browser-runaway")]}


def ask(persona, tool: str, q: str = "x") -> dict:
    run = persona.api.post_json("/api/v1/runs", {"task": "t"}).json()
    response = persona.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": tool, "args": {"q": q}}
    )
    assert response.status_code == 200, response.content
    return response.json()


def degrade(person, tool: str = "browser.open", minutes: str = "15", reason: str = "vendor down"):
    return logged_in(person).post(
        reverse("tools:degrade", args=[tool]), {"minutes": minutes, "reason": reason}
    )


def test_on_call_degrades_a_tool_for_every_agent_until_it_is_lifted(world, oncall, admin):
    before = timezone.now()
    response = degrade(oncall)
    assert response.status_code == 302, response.content
    assert response["Location"] == reverse("tools:detail", args=["browser.open"])

    breaker = ToolBreaker.objects.get(tool="browser.open")
    assert breaker.forced_by == "user:olivia-oncall"
    assert breaker.forced_reason == "vendor down"
    assert (
        before + timedelta(minutes=15)
        <= breaker.forced_until
        <= timezone.now() + timedelta(minutes=15)
    )
    entry = AuditEntry.objects.get(action="tool.degraded")
    assert entry.reason == "vendor down" and entry.target_id == "browser.open"
    delivery = WebhookDelivery.objects.get(event="tool.degraded")
    assert delivery.payload["tool"] == "browser.open"
    assert delivery.payload["by"] == "user:olivia-oncall"

    for persona in world["agents"]:
        answer = ask(persona, "browser.open")
        assert answer["decision"] == "stop"
        assert answer["stop_reason"] == "tool_degraded:browser.open"
        call = ToolCall.objects.get(pk=answer["id"])
        assert call.detail.startswith("degraded by user:olivia-oncall until ")
        assert call.detail.endswith(": vendor down")
        assert ask(persona, "kb.read")["decision"] == "allow"

    page = logged_in(admin).get(reverse("runs:list"))
    banner = page.content.decode()
    assert 'id="degraded-tools-banner"' in banner
    assert "browser.open" in banner and "vendor down" in banner and "olivia-oncall" in banner

    response = logged_in(admin).post(reverse("tools:lift", args=["browser.open"]))
    assert response.status_code == 302
    breaker.refresh_from_db()
    assert breaker.forced_until is None
    assert AuditEntry.objects.filter(action="tool.restored", actor="user:ada-admin").exists()
    assert WebhookDelivery.objects.filter(event="tool.restored").exists()
    assert ask(world["agents"][0], "browser.open")["decision"] == "allow"
    assert (
        'id="degraded-tools-banner"'
        not in logged_in(admin).get(reverse("runs:list")).content.decode()
    )


def test_a_degrade_ends_by_itself_when_its_time_is_up(world, oncall):
    degrade(oncall, minutes="5")
    assert ask(world["agents"][0], "browser.open")["decision"] == "stop"
    ToolBreaker.objects.filter(tool="browser.open").update(
        forced_until=timezone.now() - timedelta(seconds=1)
    )
    assert ask(world["agents"][0], "browser.open")["decision"] == "allow"
    page = logged_in(oncall).get(reverse("runs:list")).content.decode()
    assert 'id="degraded-tools-banner"' not in page


def test_a_degrade_needs_a_reason_and_a_known_duration(world, oncall):
    response = degrade(oncall, reason="  ")
    assert response.status_code == 422
    assert "reason" in response.content.decode().lower()
    response = degrade(oncall, minutes="100000")
    assert response.status_code == 422
    assert not ToolBreaker.objects.filter(forced_until__isnull=False).exists()
    assert not AuditEntry.objects.filter(action="tool.degraded").exists()
    assert ask(world["agents"][0], "browser.open")["decision"] == "allow"


def test_outsiders_and_anonymous_people_cannot_degrade_or_lift(world, outsider, client):
    assert degrade(outsider).status_code == 403
    response = client.post(
        reverse("tools:degrade", args=["browser.open"]), {"minutes": "15", "reason": "x"}
    )
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert client.post(reverse("tools:lift", args=["browser.open"])).status_code == 302
    assert logged_in(outsider).post(reverse("tools:lift", args=["browser.open"])).status_code == 403
    assert not ToolBreaker.objects.filter(forced_until__isnull=False).exists()
    assert ask(world["agents"][0], "browser.open")["decision"] == "allow"


def test_degrading_twice_extends_it_and_only_post_changes_it(world, oncall):
    assert logged_in(oncall).get(reverse("tools:degrade", args=["browser.open"])).status_code == 405
    degrade(oncall, minutes="5")
    degrade(oncall, minutes="60", reason="still down")
    breaker = ToolBreaker.objects.get(tool="browser.open")
    assert breaker.forced_until > timezone.now() + timedelta(minutes=59)
    assert breaker.forced_reason == "still down"
    assert AuditEntry.objects.filter(action="tool.degraded").count() == 2


def test_a_degraded_tool_is_refused_without_touching_its_normal_breaker(world, oncall):
    degrade(oncall)
    ask(world["agents"][0], "browser.open")
    breaker = ToolBreaker.objects.get(tool="browser.open")
    assert breaker.state == "closed" and breaker.opened_at is None


def test_the_allow_path_takes_the_same_queries_after_a_lifted_degrade(
    world, oncall, django_assert_num_queries
):
    persona = world["agents"][0]
    degrade(oncall, tool="kb.read")
    logged_in(oncall).post(reverse("tools:lift", args=["kb.read"]))
    run = persona.api.post_json("/api/v1/runs", {"task": "t"}).json()
    path = f"/api/v1/runs/{run['id']}/tool-calls"
    persona.api.post_json(path, {"tool": "kb.read", "args": {"q": "warm"}})
    # The same pin as tests/gateway/test_query_counts.py: the breaker's forced fields are read
    # with the row the gateway already locks.
    with django_assert_num_queries(12):
        answer = persona.api.post_json(path, {"tool": "kb.read", "args": {"q": "pinned"}}).json()
    assert answer["decision"] == "allow"
