"""A run's trace opens with a summary: calls per tool (allowed, stopped, pending), cost (total and
per tool), time (active and waiting) and the stop; read in a fixed number of queries."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from agents.models import Run
from agents.runs.selectors import run_get, run_summary
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["search.read", "kb.read", "http.get", "email.send", "browser.open"]
  definitions:
    email.send: {effect: write}
    browser.open: {effect: read, expensive: true, cost_usd: 0.25}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 40, max_usd: 100, max_tokens: 100000}
writes: {require_approval: true}
"""


def call(agent, run_id, tool, args=None):
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args or {}}
    )
    assert response.status_code == 200, response.content
    return response.json()


def busy_run(agent, start_run, *, browser_calls: int = 2) -> int:
    """kb.read twice (one reporting $0.10 of its own), browser.open at $0.25 a call, a step of
    $0.05, then email.send waiting for approval."""
    run = start_run()
    agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", {"tokens_in": 10, "usd": "0.05"})
    first = call(agent, run["id"], "kb.read", {"q": 1})
    agent.api.post_json(
        f"/api/v1/tool-calls/{first['id']}/result", {"ok": True, "output": {}, "usd": "0.1"}
    )
    call(agent, run["id"], "kb.read", {"q": 2})
    for i in range(browser_calls):
        assert call(agent, run["id"], "browser.open", {"url": str(i)})["decision"] == "allow"
    assert call(agent, run["id"], "email.send", {"to": "a"})["decision"] == "pending_approval"
    return run["id"]


def test_the_summary_counts_calls_per_tool_and_their_cost(agent, start_run, publish_policy):
    publish_policy(POLICY)
    run_id = busy_run(agent, start_run)

    summary = run_summary(run_get(run_id=run_id))

    rows = {row.tool: row for row in summary.tools}
    assert list(rows) == ["browser.open", "email.send", "kb.read"]
    assert (rows["kb.read"].allowed, rows["kb.read"].stopped, rows["kb.read"].pending) == (2, 0, 0)
    assert rows["kb.read"].usd == Decimal("0.1")
    assert (rows["browser.open"].allowed, rows["browser.open"].usd) == (2, Decimal("0.5"))
    assert rows["email.send"].pending == 1
    assert summary.usd == Decimal("0.65")
    assert summary.tools_usd == Decimal("0.6")
    assert summary.stop is None  # still running (waiting for a reviewer)


def test_a_stopped_call_is_counted_as_stopped_and_the_stop_is_explained(agent, start_run, oncall):
    run = start_run()
    call(agent, run["id"], "kb.read", {"q": 1})
    call(agent, run["id"], "shell.exec")

    summary = run_summary(run_get(run_id=run["id"]))

    rows = {row.tool: row for row in summary.tools}
    assert (rows["shell.exec"].allowed, rows["shell.exec"].stopped) == (0, 1)
    assert summary.stop is not None
    assert summary.stop.reason == "tool_denied:shell.exec"
    assert summary.stop.detail == "not on the allowlist"


def test_the_page_opens_with_the_summary_above_the_trace(oncall, agent, start_run, publish_policy):
    publish_policy(POLICY)
    run_id = busy_run(agent, start_run)

    page = logged_in(oncall).get(reverse("runs:detail", args=[run_id])).content.decode()

    summary_at = page.index('id="run-summary"')
    assert summary_at < page.index('id="timeline"')
    table = page[summary_at : page.index("</table>", summary_at)]
    assert "<td>browser.open</td><td>2</td><td>0</td><td>0</td><td>$0.5000</td>" in table
    assert "<td>email.send</td><td>0</td><td>0</td><td>1</td><td>$0.0000</td>" in table
    assert "<td>kb.read</td><td>2</td><td>0</td><td>0</td><td>$0.1000</td>" in table
    assert "$0.6500 in all" in page
    assert "$0.0500 on model steps" in page
    assert '<span data-field="waiting-seconds">' in page[:summary_at]  # time, with the facts
    assert "(waiting now)" in page


def test_the_live_header_fragment_carries_the_summary(oncall, agent, start_run):
    run = start_run()
    call(agent, run["id"], "kb.read", {"q": 1})
    response = logged_in(oncall).get(
        reverse("runs:detail", args=[run["id"]]) + "?fragment=header", HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert 'id="run-summary"' in response.content.decode()
    assert "<td>kb.read</td><td>1</td>" in response.content.decode()


# The session, the user and their groups; the run; a page of its trace; the calls per tool (one
# aggregate); the stop's trace event, its stopped call and the policy version it ran under (a
# budget stop, the dearest to explain); the kill switch banner, the approvals badge, the degraded
# tools and the paused agents banners.
PINNED_QUERIES = 13


def test_the_run_page_costs_the_same_queries_for_few_or_many_calls(
    oncall, agent, start_run, publish_policy, django_assert_num_queries
):
    publish_policy(POLICY)
    few = busy_run(agent, start_run, browser_calls=1)
    many = busy_run(agent, start_run, browser_calls=30)
    for run_id in (few, many):
        Run.objects.filter(pk=run_id).update(status="stopped", stop_reason="max_tool_calls")
    client = logged_in(oncall)
    client.get(reverse("runs:detail", args=[few]))  # warm the policy cache

    for run_id in (few, many):
        with django_assert_num_queries(PINNED_QUERIES):
            assert client.get(reverse("runs:detail", args=[run_id])).status_code == 200
