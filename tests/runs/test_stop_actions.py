"""The run page explains a stop with its numbers (which budget or cap, used and limit), when the
tool's breaker lets a call through again, and a link to where the next step is taken."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents import stop_reasons
from agents.models import Run, ToolBreaker
from agents.policy.services import kill_switch_set
from agents.registry.services import agent_set_enabled
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["search.read", "kb.read", "http.get", "email.send", "browser.open", "vendor.quote.get"]
  definitions:
    email.send: {effect: write}
    browser.open: {effect: read, expensive: true, cost_usd: 0.25, max_calls_per_run: 3}
    vendor.quote.get:
      breaker: {window: 10, min_calls: 2, failure_rate: 0.5, cooldown_seconds: 30, trial_calls: 1}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15, max_usd: 10, max_tokens: 100000}
writes: {require_approval: true}
"""


def call(agent, run_id, tool, args=None):
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args or {}}
    )
    assert response.status_code == 200, response.content
    return response.json()


def step(agent, run_id, **body):
    response = agent.api.post_json(f"/api/v1/runs/{run_id}/steps", body)
    assert response.status_code == 200, response.content
    return response.json()


def run_page(person, run_id) -> str:
    response = logged_in(person).get(reverse("runs:detail", args=[run_id]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_tool_call_budget_stop_names_the_runs_budget_and_links_to_the_budgets(
    oncall, agent, start_run
):
    run = start_run()
    for i in range(15):
        assert call(agent, run["id"], "kb.read", {"q": i})["decision"] == "allow"
    assert call(agent, run["id"], "kb.read", {"q": 16})["stop_reason"] == "max_tool_calls"

    page = run_page(oncall, run["id"])
    assert "15 of 15 tool calls (the run&#x27;s budget)" in page
    assert "per-run cap" not in page
    assert f'href="{reverse("policy:budgets")}"' in page
    assert "Raise max_tool_calls in the policy" in page


def test_a_per_tool_cap_stop_names_the_tool_and_its_cap_and_links_to_the_tool(
    oncall, agent, start_run, publish_policy
):
    publish_policy(POLICY)
    run = start_run()
    for i in range(3):
        assert call(agent, run["id"], "browser.open", {"url": str(i)})["decision"] == "allow"
    assert call(agent, run["id"], "browser.open", {"url": "4"})["stop_reason"] == "max_tool_calls"

    page = run_page(oncall, run["id"])
    assert "3 of 3 calls of browser.open (its per-run cap)" in page
    assert "the run&#x27;s budget" not in page
    assert f'href="{reverse("policy:tool", args=["browser.open"])}"' in page


@pytest.mark.parametrize(
    ("budgets", "steps", "expected"),
    [
        ({"max_steps": 2}, [{"tokens_in": 1}] * 3, "2 of 2 model steps (the run&#x27;s budget)"),
        (
            {"max_tokens": 100},
            [{"tokens_in": 60, "tokens_out": 40}, {"tokens_in": 1}],
            "100 of 100 tokens (the run&#x27;s budget)",
        ),
        (
            {"max_usd": 1},
            [{"usd": "0.6"}, {"usd": "0.6"}],
            "$0.6000 of $1.0000 spent (the run&#x27;s budget)",
        ),
    ],
)
def test_step_budget_stops_show_the_used_and_the_limit(
    oncall, agent, start_run, budgets, steps, expected
):
    run = start_run(budgets=budgets)
    for body in steps:
        answer = step(agent, run["id"], **body)
    assert answer["decision"] == "stop"

    page = run_page(oncall, run["id"])
    assert expected in page
    assert "; the agent asked for it, the policy allows" in page  # below the policy's ceiling


def test_a_budget_the_agent_asked_for_below_the_ceiling_says_so_and_offers_no_raise(
    oncall, agent, start_run
):
    run = start_run(budgets={"max_tool_calls": 1})
    call(agent, run["id"], "kb.read", {"q": 1})
    assert call(agent, run["id"], "kb.read", {"q": 2})["stop_reason"] == "max_tool_calls"

    page = run_page(oncall, run["id"])
    assert "1 of 1 tool calls (the run&#x27;s budget); the agent asked for it" in page
    assert "the policy allows 15" in page
    assert 'class="next-step"' not in page


def test_a_max_seconds_stop_shows_the_active_time_against_the_budget(oncall, agent, start_run):
    run = start_run(budgets={"max_seconds": 5})
    Run.objects.filter(pk=run["id"]).update(started_at=timezone.now() - timedelta(seconds=6))
    assert call(agent, run["id"], "kb.read")["stop_reason"] == "max_seconds"

    page = run_page(oncall, run["id"])
    assert "6 of 5 seconds of active time (the run&#x27;s budget)" in page


def test_a_ceiling_of_the_agents_own_links_to_the_agents_budgets(
    oncall, agent, start_run, publish_policy
):
    publish_policy(POLICY + "agents:\n  support-bot: {budgets: {max_steps: 1}}\n")
    run = start_run()
    step(agent, run["id"], tokens_in=1)
    assert step(agent, run["id"], tokens_in=1)["stop_reason"] == "max_steps"

    page = run_page(oncall, run["id"])
    assert "1 of 1 model steps" in page
    assert f'href="{reverse("policy:agent_budgets", args=["support-bot"])}"' in page


def open_breaker(agent, start_run) -> int:
    """Two failures open vendor.quote.get's breaker; the next run's call is degraded."""
    first = start_run()
    for i in range(2):
        allowed = call(agent, first["id"], "vendor.quote.get", {"sku": i})
        agent.api.post_json(
            f"/api/v1/tool-calls/{allowed['id']}/result", {"ok": False, "error": "vendor 503"}
        )
    assert ToolBreaker.objects.get(tool="vendor.quote.get").state == "open"
    run = start_run()
    answer = call(agent, run["id"], "vendor.quote.get", {"sku": 9})
    assert answer["stop_reason"] == "tool_degraded:vendor.quote.get"
    return run["id"]


def test_a_degraded_stop_says_when_the_breaker_lets_a_trial_call_through(
    oncall, agent, start_run, publish_policy
):
    publish_policy(POLICY)
    run_id = open_breaker(agent, start_run)
    opened_at = timezone.now() - timedelta(seconds=10)
    ToolBreaker.objects.filter(tool="vendor.quote.get").update(opened_at=opened_at)

    page = run_page(oncall, run_id)
    trial_at = opened_at + timedelta(seconds=30)
    assert f"lets a trial call through at {trial_at:%H:%M:%S} UTC" in page
    assert "cool-down 30s" in page
    assert f'href="{reverse("policy:tool", args=["vendor.quote.get"])}"' in page


def test_a_degraded_stop_says_now_once_the_cool_down_is_over_and_the_state_after(
    oncall, agent, start_run, publish_policy
):
    publish_policy(POLICY)
    run_id = open_breaker(agent, start_run)
    ToolBreaker.objects.filter(tool="vendor.quote.get").update(
        opened_at=timezone.now() - timedelta(seconds=31)
    )
    assert "lets the next call through now" in run_page(oncall, run_id)

    ToolBreaker.objects.filter(tool="vendor.quote.get").update(state="closed", opened_at=None)
    assert "The breaker of vendor.quote.get is closed now" in run_page(oncall, run_id)


def test_a_denied_tool_links_to_its_policy(oncall, agent, start_run):
    run = start_run()
    call(agent, run["id"], "shell.exec")
    page = run_page(oncall, run["id"])
    assert f'href="{reverse("policy:tool", args=["shell.exec"])}"' in page


def test_a_rejected_write_links_to_its_approval_card(
    oncall, reviewer, agent, start_run, publish_policy
):
    publish_policy(POLICY)
    run = start_run()
    pending = call(agent, run["id"], "email.send", {"to": "a"})
    approval_decide(
        request_id=pending["approval"]["id"], reviewer=reviewer.user, verdict="reject", comment="no"
    )
    assert Run.objects.get(pk=run["id"]).stop_reason == "approval_rejected:email.send"

    request = ApprovalRequest.objects.get()
    page = run_page(oncall, run["id"])
    assert f'class="next-step" href="{reverse("approvals:card", args=[request.pk])}"' in page


def test_a_kill_switch_stop_links_to_the_kill_switch(oncall, agent, start_run, publish_policy):
    publish_policy(POLICY)
    kill_switch_set(mode="disable_writes", reason="incident 42", actor="user:ada")
    run = start_run()
    assert call(agent, run["id"], "email.send", {"to": "a"})["stop_reason"] == "kill_switch"
    page = run_page(oncall, run["id"])
    assert f'class="next-step" href="{reverse("kill_switch")}"' in page
    assert "writes are disabled (email.send is a write)" in page  # the stop's detail


def test_a_disabled_agent_stop_links_to_the_agent(oncall, agent, start_run):
    run = start_run()
    agent_set_enabled(agent=agent.agent, enabled=False, actor="user:ada", reason="misbehaving")
    assert call(agent, run["id"], "kb.read")["stop_reason"] == "agent_disabled"
    page = run_page(oncall, run["id"])
    assert f'class="next-step" href="{reverse("agents:detail", args=["support-bot"])}"' in page


def test_explain_keeps_its_contract_for_the_other_callers():
    what, todo = stop_reasons.explain("max_tool_calls")
    assert "tool-call budget" in what
    assert todo
    assert stop_reasons.explain("no_such_reason") == ("Unknown stop reason.", "")
    # The richer explanation starts from the same words.
    facts = stop_reasons.StopFacts(agent="support-bot", budgets={}, usage={})
    assert stop_reasons.explain_run("ok", facts).what == stop_reasons.explain("ok")[0]
    assert stop_reasons.explain_run("ok", facts).next_step is None
