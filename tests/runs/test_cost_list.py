"""Cost on the runs list: each run's amount in dollars, a filter by tool (runs that called it at
least once) and a "most expensive first" order paged by (usd, id)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.urls import reverse
from django.utils import timezone

from agents.models import Decision, Run, ToolCall
from tests.conftest import logged_in


def bulk_runs(agent, usds: list[str]) -> list[Run]:
    now = timezone.now()
    return Run.objects.bulk_create(
        Run(
            agent=agent,
            task=f"task number {i}",
            policy_version=1,
            started_at=now - timedelta(seconds=i),
            usd=Decimal(usd),
        )
        for i, usd in enumerate(usds)
    )


def call(run: Run, tool: str) -> ToolCall:
    return ToolCall.objects.create(
        run=run, tool=tool, args={}, args_hash="x", decision=Decision.ALLOW, counted=True
    )


def test_each_row_shows_the_runs_amount_even_without_a_usd_budget(oncall, agent):
    [run] = bulk_runs(agent.agent, ["427.6"])
    assert run.max_usd is None
    page = logged_in(oncall).get(reverse("runs:list")).content.decode()
    assert '<td class="usd" data-field="usd">$427.60</td>' in page


def test_a_small_amount_keeps_its_cents_fractions(oncall, agent):
    bulk_runs(agent.agent, ["0.0125"])
    page = logged_in(oncall).get(reverse("runs:list")).content.decode()
    assert '<td class="usd" data-field="usd">$0.0125</td>' in page


def test_it_filters_the_runs_that_called_a_tool_at_least_once(oncall, agent):
    browsing, reading, idle = bulk_runs(agent.agent, ["1", "2", "3"])
    call(browsing, "browser.open")
    call(browsing, "browser.open")
    call(reading, "kb.read")
    response = logged_in(oncall).get(reverse("runs:list"), {"tool": "browser.open"})
    assert response.status_code == 200
    assert [run.pk for run in response.context["runs"]] == [browsing.pk]
    assert 'value="browser.open"' in response.content.decode()


def test_the_most_expensive_runs_come_first_and_newest_first_stays_the_default(oncall, agent):
    cheap, dear, middle = bulk_runs(agent.agent, ["0.5", "427.6", "12"])
    client = logged_in(oncall)
    response = client.get(reverse("runs:list"), {"sort": "cost"})
    assert response.status_code == 200
    assert [run.pk for run in response.context["runs"]] == [dear.pk, middle.pk, cheap.pk]
    newest_first = client.get(reverse("runs:list")).context["runs"]
    assert [run.pk for run in newest_first] == [cheap.pk, dear.pk, middle.pk]


def test_cost_pages_cover_every_run_once_even_with_equal_amounts(oncall, agent):
    # 70 runs, 20 of them at the same amount: the id breaks the tie across the page boundary.
    runs = bulk_runs(agent.agent, [str(i % 50) for i in range(70)])
    client = logged_in(oncall)
    seen, query, pages = [], {"sort": "cost"}, 0
    while query:
        response = client.get(reverse("runs:list"), query)
        pages += 1
        seen += [(run.usd, run.pk) for run in response.context["runs"]]
        cursor = response.context["next_cursor"]
        query = {"sort": "cost", "after": cursor} if cursor else None
    assert pages == 2
    assert sorted(pk for _, pk in seen) == sorted(run.pk for run in runs)
    assert seen == sorted(seen, reverse=True)


def test_a_garbled_cost_cursor_gives_the_first_page(oncall, agent):
    one, three, two = bulk_runs(agent.agent, ["1", "3", "2"])
    response = logged_in(oncall).get(reverse("runs:list"), {"sort": "cost", "after": "x-y"})
    assert response.status_code == 200
    assert [run.pk for run in response.context["runs"]] == [three.pk, two.pk, one.pk]


def test_the_tool_filter_and_cost_order_cost_the_same_queries_for_5_or_50_runs(
    oncall, agent, django_assert_num_queries
):
    client = logged_in(oncall)
    query = {"tool": "browser.open", "sort": "cost"}
    [never_browsed] = bulk_runs(agent.agent, ["999"])
    call(never_browsed, "kb.read")
    for run in bulk_runs(agent.agent, ["1"] * 5):
        call(run, "browser.open")
    client.get(reverse("runs:list"), query)  # warm the session
    # session, user, role, kill switch, pending count, degraded tools, paused agents, agent names,
    # the page of runs
    with django_assert_num_queries(9):
        response = client.get(reverse("runs:list"), query)
    assert len(response.context["runs"]) == 5
    for run in bulk_runs(agent.agent, ["2"] * 45):
        call(run, "browser.open")
    with django_assert_num_queries(9):
        response = client.get(reverse("runs:list"), query)
    runs = response.context["runs"]
    assert len(runs) == 50
    assert never_browsed not in runs
    assert [run.usd for run in runs] == sorted((run.usd for run in runs), reverse=True)
