"""On-call contains a runaway agent without waiting for an admin: pause it (with a reason) and its
running runs stop at their next call with ``agent_disabled``, new runs are refused, every page
shows it, and on-call or an admin resume it. The agent's page is open to every console role."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.gateway import services as gateway_services
from agents.models import Agent, Run, TraceEvent
from opsconsole.models import AuditEntry, WebhookDelivery, WebhookEndpoint
from tests.conftest import logged_in

POLICY = """
tools:
  allow: ["kb.read", "browser.open"]
budgets: {max_tool_calls: 50, max_steps: 50, max_seconds: 600}
"""


@pytest.fixture
def webhook(db) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        name="oncall", url="https://hooks.example.com/x", secret="s3cret"
    )


@pytest.fixture
def policy(publish_policy):
    publish_policy(POLICY)


def pause(client: Client, reason: str = "hammering browser.open through the vendor outage"):
    return client.post(reverse("agents:pause", args=["support-bot"]), {"reason": reason})


def test_on_call_pauses_an_agent_and_its_running_run_stops_at_its_next_call(
    oncall, agent, policy, start_run, webhook
):
    run = start_run()
    response = pause(logged_in(oncall))
    assert response.status_code == 302

    bot = Agent.objects.get(name="support-bot")
    assert (bot.enabled, bot.paused, bot.disabled_by) == (False, True, "olivia-oncall")
    assert bot.disabled_reason == "hammering browser.open through the vendor outage"
    assert bot.disabled_at is not None

    entry = AuditEntry.objects.filter(action="agent.pause").get()
    assert (entry.actor, entry.target_id) == ("user:olivia-oncall", "support-bot")
    assert entry.reason == "hammering browser.open through the vendor outage"
    delivery = WebhookDelivery.objects.get(event="agent.paused")
    assert delivery.payload["agent"] == "support-bot"
    assert delivery.payload["by"] == "olivia-oncall"

    answer = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "browser.open", "args": {}}
    ).json()
    assert (answer["decision"], answer["stop_reason"]) == ("stop", "agent_disabled")
    stopped = Run.objects.get(pk=run["id"])
    assert (stopped.status, stopped.stop_reason) == ("stopped", "agent_disabled")
    stop = TraceEvent.objects.filter(run=stopped, kind="stop").get()
    assert stop.data["detail"] == (
        "paused by olivia-oncall: hammering browser.open through the vendor outage"
    )

    refused = agent.api.post_json("/api/v1/runs", {"task": "again"})
    assert refused.status_code == 409
    assert refused.json()["stop_reason"] == "agent_disabled"
    assert "paused by olivia-oncall" in str(refused.json()["detail"])


def test_every_page_shows_the_paused_agent_with_who_why_and_a_link(oncall, reviewer, agent):
    pause(logged_in(oncall))
    page = logged_in(reviewer).get(reverse("runs:list")).content.decode()
    banner = page.split('id="paused-agents-banner"')[1].split("</div>")[0]
    assert "support-bot" in banner
    assert "olivia-oncall" in banner
    assert "hammering browser.open through the vendor outage" in banner
    assert reverse("agents:detail", args=["support-bot"]) in banner


def test_a_pause_without_a_reason_is_a_form_error(oncall, agent):
    response = pause(logged_in(oncall), reason="   ")
    assert response.status_code == 422
    assert "reason" in response.content.decode().lower()
    bot = Agent.objects.get(name="support-bot")
    assert (bot.enabled, bot.paused) == (True, False)
    assert not AuditEntry.objects.filter(action="agent.pause").exists()


def test_outsiders_and_anonymous_visitors_cannot_pause_or_resume(outsider, agent):
    assert pause(logged_in(outsider)).status_code == 403
    anonymous = pause(Client())
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("login"))
    assert Agent.objects.get(name="support-bot").enabled
    Agent.objects.filter(name="support-bot").update(enabled=False, paused=True)
    resume = reverse("agents:resume", args=["support-bot"])
    assert logged_in(outsider).post(resume).status_code == 403
    assert Client().post(resume).status_code == 302
    assert not Agent.objects.get(name="support-bot").enabled


def test_pause_and_resume_need_a_post(oncall, agent):
    client = logged_in(oncall)
    assert client.get(reverse("agents:pause", args=["support-bot"])).status_code == 405
    assert client.get(reverse("agents:resume", args=["support-bot"])).status_code == 405


def test_on_call_resumes_a_paused_agent_and_it_may_start_runs_again(oncall, agent, policy, webhook):
    client = logged_in(oncall)
    pause(client)
    response = client.post(reverse("agents:resume", args=["support-bot"]))
    assert response.status_code == 302
    bot = Agent.objects.get(name="support-bot")
    assert (bot.enabled, bot.paused, bot.disabled_reason, bot.disabled_by) == (True, False, "", "")
    assert AuditEntry.objects.filter(action="agent.resume", actor="user:olivia-oncall").exists()
    assert WebhookDelivery.objects.filter(event="agent.resumed").exists()
    assert agent.api.post_json("/api/v1/runs", {"task": "back"}).status_code == 201
    page = client.get(reverse("runs:list")).content.decode()
    assert 'id="paused-agents-banner"' not in page


def test_pausing_twice_changes_nothing_the_second_time(oncall, agent):
    client = logged_in(oncall)
    pause(client)
    pause(client, reason="again")
    assert Agent.objects.get(name="support-bot").disabled_reason == (
        "hammering browser.open through the vendor outage"
    )
    assert AuditEntry.objects.filter(action="agent.pause").count() == 1


def _world(agent) -> Run:
    """A run that made calls in the last 15 minutes, and runs that stopped in the last day."""
    run, _ = gateway_services.run_start(agent=agent.agent, task="browse the vendor site")
    for i in range(3):
        gateway_services.tool_call_decide(
            agent=agent.agent, run_id=run.pk, tool="browser.open", args={"n": i}
        )
    now = timezone.now()
    for reason in ("tool_denied:email.send", "tool_denied:http.get", "max_tool_calls"):
        Run.objects.create(
            agent=agent.agent,
            task="old",
            policy_version=1,
            status="stopped",
            stop_reason=reason,
            started_at=now - timedelta(hours=2),
            ended_at=now - timedelta(hours=1),
            usd=Decimal("2.5"),
        )
    return run


def test_the_agent_page_shows_on_call_its_rate_spend_stop_mix_and_recent_runs_and_calls(
    oncall, agent, policy
):
    run = _world(agent)
    response = logged_in(oncall).get(reverse("agents:detail", args=["support-bot"]))
    assert response.status_code == 200
    page = response.content.decode()
    assert '<dd data-field="calls_per_minute">0.2</dd>' in page  # 3 calls / 15 minutes
    assert '<dd data-field="usd_day">$7.50</dd>' in page
    mix = page.split('id="stop-mix"')[1].split("</section>")[0]
    assert "tool_denied" in mix and ">2<" in mix
    assert "max_tool_calls" in mix
    assert reverse("runs:detail", args=[run.pk]) in page
    assert "browser.open" in page.split('id="recent-calls"')[1]
    # containment for on-call; keys and enable/disable for admins only
    assert reverse("agents:pause", args=["support-bot"]) in page
    assert reverse("agents:key_issue", args=["support-bot"]) not in page
    assert reverse("agents:set_enabled", args=["support-bot"]) not in page


def test_an_admin_sees_the_key_and_enable_controls_on_the_same_page(admin, agent):
    page = logged_in(admin).get(reverse("agents:detail", args=["support-bot"])).content.decode()
    assert reverse("agents:key_issue", args=["support-bot"]) in page
    assert reverse("agents:set_enabled", args=["support-bot"]) in page
    assert reverse("agents:pause", args=["support-bot"]) in page


def test_a_paused_agents_page_says_who_paused_it_and_offers_resume(oncall, reviewer, agent):
    pause(logged_in(oncall))
    page = logged_in(reviewer).get(reverse("agents:detail", args=["support-bot"])).content.decode()
    assert "paused by olivia-oncall" in page
    assert reverse("agents:resume", args=["support-bot"]) in page


# session, user, role, the agent, policy version, spend, rate, stop mix, recent runs, recent calls;
# the chrome: kill switch, pending count, degraded tools, paused agents
PINNED_QUERIES = 14


def test_the_agent_page_costs_the_same_queries_for_few_or_many_runs(
    oncall, agent, policy, django_assert_num_queries
):
    client = logged_in(oncall)
    _world(agent)
    url = reverse("agents:detail", args=["support-bot"])
    client.get(url)  # warm the session
    with django_assert_num_queries(PINNED_QUERIES):
        client.get(url)
    for _ in range(5):
        _world(agent)
    with django_assert_num_queries(PINNED_QUERIES):
        response = client.get(url)
    assert response.status_code == 200
