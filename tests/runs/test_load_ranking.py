"""Who is generating load, on the landing page: agents and tools ranked by what they cost now
(USD in the last hour, then calls per minute), with stops per minute and a per-minute trend,
refreshed live, read in a fixed number of queries."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import ToolCall
from agents.runs.selectors import load_ranking
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "browser.open"]
  definitions:
    browser.open: {effect: read, expensive: true, cost_usd: 0.25}
budgets: {max_steps: 30, max_seconds: 900, max_tool_calls: 100, max_usd: 100, max_tokens: 100000}
"""

# The ranking's read: the last hour's tool calls by agent, tool and minute (with the agents'
# names), then the ranked agents' spend over the last day.
PINNED_QUERIES = 2


def call(persona, run_id: int, tool: str, n: int) -> dict:
    response = persona.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": {"n": n}}
    )
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def storm(agent, outsider_agent, start_run, publish_policy):
    """support-bot hammers browser.open ($0.25 a call); other-bot reads the knowledge base for
    free and is then denied a tool it may not use (a stop)."""
    publish_policy(POLICY)
    runaway = start_run()
    for n in range(6):
        assert call(agent, runaway["id"], "browser.open", n)["decision"] == "allow"
    quiet = start_run(outsider_agent)
    for n in range(2):
        assert call(outsider_agent, quiet["id"], "kb.read", n)["decision"] == "allow"
    assert call(outsider_agent, quiet["id"], "shell.exec", 0)["decision"] == "stop"
    return runaway["id"], quiet["id"]


def test_the_costliest_agent_and_tool_come_first_with_their_figures(oncall, storm):
    response = logged_in(oncall).get(reverse("overview"))

    assert response.status_code == 200
    ranking = response.context["ranking"]
    top_agent, second_agent = ranking.agents
    assert top_agent.name == "support-bot"
    assert (top_agent.usd_last_hour, top_agent.calls_per_minute) == (Decimal("1.5"), 6)
    assert top_agent.usd_last_day == Decimal("1.5")
    assert top_agent.stops_per_minute == 0
    assert second_agent.name == "other-bot"
    assert (second_agent.calls_per_minute, second_agent.stops_per_minute) == (3, 1)
    assert [tool.name for tool in ranking.tools] == ["browser.open", "kb.read", "shell.exec"]
    browser = ranking.tools[0]
    assert (browser.usd_last_hour, browser.calls_per_minute) == (Decimal("1.5"), 6)
    assert (len(browser.trend), sum(browser.trend)) == (30, 6)  # per minute, the last 30
    assert ranking.tools[2].stops_per_minute == 1


def test_the_overview_links_the_top_agent_and_tool_to_their_pages(oncall, storm):
    page = logged_in(oncall).get(reverse("overview")).content.decode()

    ranking = page[page.index('id="load-ranking"') :]
    assert ranking.index("support-bot") < ranking.index("other-bot")
    assert ranking.index("browser.open") < ranking.index("kb.read")
    assert f'href="{reverse("agents:detail", args=["support-bot"])}"' in ranking
    assert f'href="{reverse("runs:list")}?agent=support-bot"' in ranking
    assert f'href="{reverse("tools:detail", args=["browser.open"])}"' in ranking
    assert f'href="{reverse("runs:list")}?tool=browser.open"' in ranking
    assert "$1.50" in ranking
    assert '<svg class="sparkline"' in ranking


def test_the_ranking_fragment_is_served_to_live_refreshes(oncall, storm):
    response = logged_in(oncall).get(
        reverse("overview"), {"fragment": "ranking"}, HTTP_HX_REQUEST="true"
    )

    assert response.status_code == 200
    fragment = response.content.decode().lstrip()
    assert fragment.startswith('<div id="load-ranking"')
    assert 'data-live-refresh="run.updated' in fragment
    assert 'data-live-throttle="1000"' in fragment
    assert "overview-stats" not in fragment
    assert "support-bot" in fragment


def test_the_ranking_reads_a_fixed_number_of_queries_as_calls_grow(
    agent, outsider_agent, start_run, storm, django_assert_num_queries
):
    runaway_id, _ = storm
    with django_assert_num_queries(PINNED_QUERIES):
        before = load_ranking(now=timezone.now())
    for n in range(6, 16):
        call(agent, runaway_id, "browser.open", n)
    another = start_run(outsider_agent)
    call(outsider_agent, another["id"], "browser.open", 0)

    with django_assert_num_queries(PINNED_QUERIES):
        after = load_ranking(now=timezone.now())

    assert after.tools[0].calls_last_hour == before.tools[0].calls_last_hour + 11


def test_the_fragment_reads_a_fixed_number_of_queries(
    oncall, agent, storm, django_assert_num_queries
):
    client = logged_in(oncall)
    client.get(reverse("overview"))  # the session is warm
    runaway_id, _ = storm
    # The session, the user and the role check, then the ranking.
    with django_assert_num_queries(PINNED_QUERIES + 3):
        client.get(reverse("overview"), {"fragment": "ranking"}, HTTP_HX_REQUEST="true")
    for n in range(6, 12):
        call(agent, runaway_id, "browser.open", n)
    with django_assert_num_queries(PINNED_QUERIES + 3):
        client.get(reverse("overview"), {"fragment": "ranking"}, HTTP_HX_REQUEST="true")


def test_a_call_older_than_an_hour_does_not_count(agent, start_run, publish_policy):
    publish_policy(POLICY)
    run = start_run()
    old = call(agent, run["id"], "browser.open", 0)
    call(agent, run["id"], "browser.open", 1)
    ToolCall.objects.filter(pk=old["id"]).update(created_at=timezone.now() - timedelta(minutes=61))

    ranking = load_ranking(now=timezone.now())

    [browser] = ranking.tools
    assert (browser.calls_last_hour, browser.usd_last_hour) == (1, Decimal("0.25"))
    [support] = ranking.agents
    assert (support.calls_last_hour, support.usd_last_hour) == (1, Decimal("0.25"))


def test_an_agent_with_no_recent_call_is_not_ranked(oncall, agent, start_run, publish_policy):
    publish_policy(POLICY)
    run = start_run()
    old = call(agent, run["id"], "kb.read", 0)
    ToolCall.objects.filter(pk=old["id"]).update(created_at=timezone.now() - timedelta(hours=2))

    page = logged_in(oncall).get(reverse("overview")).content.decode()

    assert "No tool call in the last hour." in page
