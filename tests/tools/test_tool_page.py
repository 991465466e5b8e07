"""The tool page: what one tool costs now, how its calls stop, its breaker and its rule."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import BreakerState, ToolBreaker, ToolCall
from tests.conftest import logged_in, make_agent

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "browser.open"]
  definitions:
    browser.open: {effect: read, expensive: true, cost_usd: 0.7, max_calls_per_run: 40}
budgets: {max_tool_calls: 50, max_steps: 50, max_seconds: 600}
"""


@pytest.fixture
def storm(publish_policy, agent):
    """Two agents calling browser.open: 30 allowed calls in the last 15 minutes, one stop."""
    publish_policy(POLICY)
    runaway = make_agent("browser-runaway")
    for persona, calls in ((runaway, 25), (agent, 5)):
        run = persona.api.post_json("/api/v1/runs", {"task": "browse"}).json()
        for n in range(calls):
            answer = persona.api.post_json(
                f"/api/v1/runs/{run['id']}/tool-calls",
                {"tool": "browser.open", "args": {"url": f"https://vendor.example/{n}"}},
            ).json()
            assert answer["decision"] == "allow", answer
            persona.api.post_json(
                f"/api/v1/tool-calls/{answer['id']}/result",
                {"ok": True, "output": {}, "usd": 0.1},
            )
    run = runaway.api.post_json(
        "/api/v1/runs", {"task": "browse", "budgets": {"max_tool_calls": 0}}
    )
    return run.json()


def test_the_tool_page_shows_rate_spend_stops_calls_and_breaker(storm, oncall):
    ToolCall.objects.create(
        run_id=storm["id"],
        tool="browser.open",
        args={},
        args_hash="h",
        decision="stop",
        stop_reason="max_tool_calls",
        created_at=timezone.now(),
    )
    # An old call counts in the day's spend only.
    old = ToolCall.objects.filter(tool="browser.open", decision="allow").first()
    ToolCall.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=3))
    ToolBreaker.objects.update_or_create(
        tool="browser.open",
        defaults={"state": BreakerState.OPEN, "opened_at": timezone.now(), "failure_rate": 0.6},
    )
    response = logged_in(oncall).get(reverse("tools:detail", args=["browser.open"]))
    assert response.status_code == 200
    page = response.content.decode()
    stats = response.context["stats"]
    assert stats.calls_15m == 30  # 29 allowed + 1 stop in the window
    assert stats.per_minute == Decimal("2.0")
    assert stats.usd_day == Decimal("30") * Decimal("0.8")
    assert stats.usd_hour == Decimal("29") * Decimal("0.8")
    assert "browser-runaway" in page and "support-bot" in page
    assert "max_tool_calls" in page
    assert 'id="tool-breaker"' in page and "open" in page
    assert "trial call" in page
    assert "$0.7" in page and "expensive" in page
    assert 'action="' + reverse("tools:degrade", args=["browser.open"]) in page
    # on-call does not edit policy
    assert reverse("policy:tool", args=["browser.open"]) not in page


def test_admins_get_a_link_to_the_tools_rule(storm, admin):
    page = logged_in(admin).get(reverse("tools:detail", args=["browser.open"])).content.decode()
    assert reverse("policy:tool", args=["browser.open"]) in page


def test_the_policy_page_links_each_tool_to_its_page(storm, oncall):
    page = logged_in(oncall).get(reverse("policy:current")).content.decode()
    assert reverse("tools:detail", args=["browser.open"]) in page


def test_a_tool_nobody_called_has_a_page_too(db, oncall):
    response = logged_in(oncall).get(reverse("tools:detail", args=["never.called"]))
    assert response.status_code == 200
    assert response.context["stats"].calls_15m == 0


def test_the_tool_page_takes_a_fixed_number_of_queries(storm, oncall, django_assert_num_queries):
    browser = logged_in(oncall)
    browser.get(reverse("tools:detail", args=["browser.open"]))
    # session, user, groups, policy, breaker, stats, stop mix, recent calls; the chrome: kill
    # switch, pending approvals, degraded tools, paused agents
    with django_assert_num_queries(12):
        browser.get(reverse("tools:detail", args=["browser.open"]))
    make_agent("third-bot")
    with django_assert_num_queries(12):
        browser.get(reverse("tools:detail", args=["browser.open"]))
