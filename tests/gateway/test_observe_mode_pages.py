"""What a team reads before it switches an agent to enforce: observed runs say what would have
happened on the runs list, the run page and the agent page; monitoring and the policy dry run
count the would-have stops."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import MetricRollup
from agents.monitoring import replay, rollups
from agents.policy.document import parse_yaml
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "email.send"]
  definitions:
    email.send: {effect: write}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 2}
agents:
  support-bot: {mode: observe}
"""


def ask(agent, run_id, tool="kb.read", **args):
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args}
    )
    assert response.json()["decision"] == "allow", response.content
    return response.json()


def finish(agent, run_id):
    response = agent.api.post_json(f"/api/v1/runs/{run_id}/finish", {"status": "succeeded"})
    assert response.status_code == 200, response.content


@pytest.fixture
def observed_runs(agent, publish_policy, start_run):
    """Three finished runs in observe mode: one past max_tool_calls, one with a write that would
    have waited for a reviewer, one enforcing would not have touched."""
    publish_policy(POLICY)
    over = start_run()
    for q in range(3):
        ask(agent, over["id"], q=q)
    finish(agent, over["id"])
    write = start_run()
    sent = ask(agent, write["id"], "email.send", to="a")
    agent.api.post_json(f"/api/v1/tool-calls/{sent['id']}/result", {"ok": True})
    finish(agent, write["id"])
    clean = start_run()
    ask(agent, clean["id"], q="fine")
    finish(agent, clean["id"])
    return over["id"], write["id"], clean["id"]


def test_the_runs_list_and_the_run_page_show_what_would_have_happened(observed_runs, oncall):
    over, write, clean = observed_runs
    client = logged_in(oncall)
    listing = client.get(reverse("runs:list")).content.decode()
    assert "would have stopped at call 3 with max_tool_calls" in listing
    assert "would have waited for approval on email.send" in listing

    page = client.get(reverse("runs:detail", args=[over])).content.decode()
    assert "would have stopped at call 3 with max_tool_calls" in page
    assert "call 3 of 2" in page
    assert "enforced: stop" in page  # the third call in the trace
    assert (
        "Enforcing would have changed nothing"
        in client.get(reverse("runs:detail", args=[clean])).content.decode()
    )


def test_the_agent_page_shows_the_mode_and_would_have_stops(observed_runs, oncall):
    page = logged_in(oncall).get(reverse("agents:detail", args=["support-bot"])).content.decode()
    assert "observe mode" in page
    assert "a pause, a disable and the kill switch stop it" in page  # containment still works
    assert "would have stopped at call 3 with max_tool_calls" in page
    assert "would have stopped: <code>max_tool_calls</code>" in page


def test_monitoring_counts_would_have_stops(observed_runs, oncall):
    rollups.rollups_compute(now=timezone.now())
    row = MetricRollup.objects.get(agent__name="support-bot", agent_version="*", size="hour")
    assert (row.runs, row.observed_runs) == (3, 3)
    assert row.would_stop_reasons == {"max_tool_calls": 1}
    assert row.stop_reasons == {"ok": 3}  # nothing was stopped

    page = logged_in(oncall).get(reverse("monitoring:dashboard") + "?agent=support-bot")
    assert page.status_code == 200
    would = page.context["would_stops"][0][1]
    assert (would.observed_runs, would.would_stop, would.by_kind) == (
        3,
        1,
        [("max_tool_calls", 1)],
    )
    assert "what enforcing would have done" in page.content.decode()


def test_the_dry_run_counts_the_observed_runs_enforcing_would_stop(observed_runs):
    over, write, clean = observed_runs
    same = replay.policy_dry_run(parse_yaml(POLICY))
    assert sorted(r.run_id for r in same.observed) == sorted(observed_runs)
    assert [r.run_id for r in same.observed_stopped] == [over]
    # The policy in force, replayed, decides as the gateway recorded: nothing "changed".
    assert [r.differences() for r in same.changed] == []

    stricter = POLICY.replace('allow: ["kb.read", "email.send"]', 'allow: ["kb.read"]')
    dry_run = replay.policy_dry_run(parse_yaml(stricter))
    assert sorted(r.run_id for r in dry_run.observed_stopped) == sorted([over, write])
    assert [r.run_id for r in dry_run.stopped] == [write]  # newly stopped by this change
    assert dry_run.stopped[0].new_stop_reason == "tool_denied:email.send"
