"""Issue 14 item 3: the tool page's rate, spend, breaker state, stop mix and recent calls are live.
htmx re-fetches them (``?fragment=stats``) on run.updated and breaker.updated, at most once a
second, and every 30 s so the rate falls back when calls stop; the degrade and lift forms stay
outside so a typed reason survives."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import BreakerState, ToolBreaker
from tests.conftest import logged_in, make_agent

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "browser.open"]
  definitions:
    browser.open: {effect: read, expensive: true, cost_usd: 0.7, max_calls_per_run: 40}
budgets: {max_tool_calls: 50, max_steps: 50, max_seconds: 600}
"""

HTMX = {"HTTP_HX_REQUEST": "true"}


def url() -> str:
    return reverse("tools:detail", args=["browser.open"]) + "?fragment=stats"


def call(persona, calls: int) -> None:
    run = persona.api.post_json("/api/v1/runs", {"task": "browse"}).json()
    for n in range(calls):
        answer = persona.api.post_json(
            f"/api/v1/runs/{run['id']}/tool-calls",
            {"tool": "browser.open", "args": {"url": f"https://vendor.example/{n}"}},
        ).json()
        assert answer["decision"] == "allow", answer
        persona.api.post_json(
            f"/api/v1/tool-calls/{answer['id']}/result", {"ok": True, "output": {}, "usd": 0.1}
        )


@pytest.fixture
def calls(publish_policy, agent):
    publish_policy(POLICY)
    call(agent, 3)
    ToolBreaker.objects.update_or_create(
        tool="browser.open",
        defaults={"state": BreakerState.OPEN, "opened_at": timezone.now(), "failure_rate": 0.6},
    )
    return agent


def test_the_stats_fragment_holds_rate_spend_breaker_stops_and_calls_but_no_form(calls, oncall):
    response = logged_in(oncall).get(url(), **HTMX)
    assert response.status_code == 200
    fragment = response.content.decode()
    assert "<html" not in fragment
    assert 'id="tool-load"' in fragment and "3 calls in the last 15 min" in fragment
    assert 'id="tool-breaker"' in fragment and "trial call" in fragment
    assert 'id="tool-stops"' in fragment
    assert 'id="tool-calls"' in fragment and "support-bot" in fragment
    assert "<form" not in fragment
    assert reverse("tools:degrade", args=["browser.open"]) not in fragment


def test_the_stats_fragment_refreshes_itself_on_runs_breakers_and_every_30_seconds(calls, oncall):
    fragment = logged_in(oncall).get(url(), **HTMX).content.decode()
    head = fragment.split(">", 1)[0]
    assert 'id="tool-stats"' in head
    assert 'data-live-refresh="run.updated breaker.updated"' in head
    assert 'data-live-throttle="1000"' in head
    assert 'hx-trigger="live-refresh, every 30s"' in head
    assert 'hx-get="' + url() + '"' in head
    assert 'hx-swap="outerHTML"' in head


def test_the_full_page_has_the_live_stats_and_the_forms_outside_them(calls, oncall):
    page = logged_in(oncall).get(url()).content.decode()  # no htmx: the whole page
    assert "<html" in page
    assert 'data-live-topics="killswitch,runs,breakers"' in page
    stats = page.split('id="tool-stats"')[1]
    assert 'data-live-refresh="run.updated breaker.updated"' in stats.split(">", 1)[0]
    assert "3 calls in the last 15 min" in stats and "trial call" in stats
    degrade = 'action="' + reverse("tools:degrade", args=["browser.open"])
    assert degrade in page and degrade not in stats.split('id="tool-containment"')[0]
    assert degrade in stats.split('id="tool-containment"')[1]


def test_the_lift_form_stays_outside_the_stats_too(calls, oncall, admin):
    logged_in(oncall).post(
        reverse("tools:degrade", args=["browser.open"]),
        {"minutes": 15, "reason": "vendor outage"},
    )
    page = logged_in(oncall).get(reverse("tools:detail", args=["browser.open"])).content.decode()
    lift = 'action="' + reverse("tools:lift", args=["browser.open"])
    assert lift in page
    stats = page.split('id="tool-stats"')[1].split('id="tool-containment"')
    assert lift not in stats[0] and lift in stats[1]
    fragment = logged_in(oncall).get(url(), **HTMX).content.decode()
    assert "degraded by hand" in fragment and "<form" not in fragment


# session, user, groups, policy, breaker, stats, stop mix, recent calls: no chrome
PINNED_FRAGMENT_QUERIES = 8


def test_the_stats_fragment_takes_a_fixed_number_of_queries(
    calls, oncall, django_assert_num_queries
):
    browser = logged_in(oncall)
    browser.get(url(), **HTMX)
    with django_assert_num_queries(PINNED_FRAGMENT_QUERIES):
        browser.get(url(), **HTMX)
    ToolBreaker.objects.filter(tool="browser.open").update(state=BreakerState.CLOSED)
    call(make_agent("third-bot"), 4)
    with django_assert_num_queries(PINNED_FRAGMENT_QUERIES):
        response = browser.get(url(), **HTMX)
    assert "7 calls in the last 15 min" in response.content.decode()
