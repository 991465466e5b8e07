"""Issue 14 item 3: the agent page's rate, spend, stop mix and recent runs and calls are live. htmx
re-fetches them (``?fragment=stats``) on every run.updated, at most once a second, and every 30 s
so the rate falls back when calls stop; the pause form stays outside so a typed reason survives."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.conftest import logged_in
from tests.registry.test_pause_agent import _world

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "browser.open"]
budgets: {max_tool_calls: 50, max_steps: 50, max_seconds: 600}
"""

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def policy(publish_policy):
    publish_policy(POLICY)


def url() -> str:
    return reverse("agents:detail", args=["support-bot"]) + "?fragment=stats"


def test_the_stats_fragment_holds_rate_spend_stop_mix_runs_and_calls_but_no_form(
    oncall, agent, policy
):
    run = _world(agent)
    response = logged_in(oncall).get(url(), **HTMX)
    assert response.status_code == 200
    fragment = response.content.decode()
    assert '<dd data-field="calls_per_minute">0.2</dd>' in fragment
    assert '<dd data-field="usd_day">$7.50</dd>' in fragment
    assert 'id="stop-mix"' in fragment and "max_tool_calls" in fragment
    assert reverse("runs:detail", args=[run.pk]) in fragment
    assert "browser.open" in fragment.split('id="recent-calls"')[1]
    assert "<form" not in fragment
    assert reverse("agents:pause", args=["support-bot"]) not in fragment
    assert "<html" not in fragment


def test_the_stats_fragment_refreshes_itself_on_run_updates_and_every_30_seconds(
    oncall, agent, policy
):
    fragment = logged_in(oncall).get(url(), **HTMX).content.decode()
    head = fragment.split(">", 1)[0]
    assert 'id="agent-stats"' in head
    assert 'data-live-refresh="run.updated"' in head
    assert 'data-live-throttle="1000"' in head
    assert 'hx-trigger="live-refresh, every 30s"' in head
    assert 'hx-get="' + url() + '"' in head
    assert 'hx-swap="outerHTML"' in head


def test_the_full_page_has_the_live_stats_the_pause_form_and_follows_runs(oncall, agent, policy):
    run = _world(agent)
    page = logged_in(oncall).get(url()).content.decode()  # no htmx: the whole page
    assert "<html" in page
    assert 'data-live-topics="killswitch,runs"' in page
    stats = page.split('id="agent-stats"')[1]
    assert 'data-live-refresh="run.updated"' in stats.split(">", 1)[0]
    assert '<dd data-field="calls_per_minute">0.2</dd>' in stats
    assert reverse("runs:detail", args=[run.pk]) in stats
    # the pause form is on the page, but not inside the refreshed part
    pause_action = 'action="' + reverse("agents:pause", args=["support-bot"])
    assert pause_action in page
    assert pause_action in page.split('id="agent-stats"')[0]


# session, user, role, the agent, spend, rate, stop mix, recent runs, recent calls: no policy, no
# chrome
PINNED_FRAGMENT_QUERIES = 9


def test_the_stats_fragment_costs_the_same_queries_for_few_or_many_calls(
    oncall, agent, policy, django_assert_num_queries
):
    client = logged_in(oncall)
    _world(agent)
    client.get(url(), **HTMX)  # warm the session
    with django_assert_num_queries(PINNED_FRAGMENT_QUERIES):
        client.get(url(), **HTMX)
    for _ in range(5):
        _world(agent)
    with django_assert_num_queries(PINNED_FRAGMENT_QUERIES):
        response = client.get(url(), **HTMX)
    assert response.status_code == 200
    assert "<form" not in response.content.decode()
