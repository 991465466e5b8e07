"""What each agent spent, in dollars, over the last hour and the last day: on the agents list (one
query for every agent) and on an agent's page."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.urls import reverse
from django.utils import timezone

from agents.models import Run
from tests.conftest import logged_in, make_agent


def spend(agent, usd: str, *, minutes_ago: float) -> Run:
    return Run.objects.create(
        agent=agent,
        task="browse",
        policy_version=1,
        started_at=timezone.now() - timedelta(minutes=minutes_ago),
        usd=Decimal(usd),
    )


def test_the_agents_list_shows_each_agents_spend_in_the_last_hour_and_day(admin, agent):
    runaway = make_agent("browser-runaway")
    spend(runaway.agent, "400", minutes_ago=5)
    spend(runaway.agent, "27.6", minutes_ago=30)
    spend(runaway.agent, "100", minutes_ago=180)  # in the day, not the hour
    spend(runaway.agent, "1000", minutes_ago=60 * 30)  # older than a day
    spend(agent.agent, "0.25", minutes_ago=10)
    page = logged_in(admin).get(reverse("agents:list")).content.decode()
    runaway_row = page.split('id="agent-browser-runaway"')[1].split("</tr>")[0]
    assert '<td class="usd" data-field="usd_hour">$427.60</td>' in runaway_row
    assert '<td class="usd" data-field="usd_day">$527.60</td>' in runaway_row
    support_row = page.split('id="agent-support-bot"')[1].split("</tr>")[0]
    assert '<td class="usd" data-field="usd_hour">$0.2500</td>' in support_row


def test_an_agent_that_spent_nothing_shows_zero(admin, agent):
    page = logged_in(admin).get(reverse("agents:list")).content.decode()
    row = page.split('id="agent-support-bot"')[1].split("</tr>")[0]
    assert '<td class="usd" data-field="usd_hour">$0</td>' in row
    assert '<td class="usd" data-field="usd_day">$0</td>' in row


def test_an_agents_page_shows_its_spend(admin, agent):
    spend(agent.agent, "3.5", minutes_ago=5)
    spend(agent.agent, "1.5", minutes_ago=120)
    response = logged_in(admin).get(reverse("agents:detail", args=["support-bot"]))
    assert response.status_code == 200
    page = response.content.decode()
    assert '<dd data-field="usd_hour">$3.50</dd>' in page
    assert '<dd data-field="usd_day">$5.00</dd>' in page


def test_the_agents_list_costs_the_same_queries_for_2_or_12_agents(
    admin, agent, django_assert_num_queries
):
    client = logged_in(admin)
    spend(agent.agent, "1", minutes_ago=1)
    client.get(reverse("agents:list"))  # warm the session
    # session, user, role, kill switch, pending count, degraded tools, paused agents, agents,
    # their keys, their spend
    with django_assert_num_queries(10):
        client.get(reverse("agents:list"))
    for i in range(10):
        extra = make_agent(f"bot-{i}")
        spend(extra.agent, "2", minutes_ago=i)
    with django_assert_num_queries(10):
        response = client.get(reverse("agents:list"))
    assert response.content.decode().count('data-field="usd_day">$2.00<') == 10
