"""The migration path page: the seed's checklist for one agent, each item's state computed from
the data (both ways for every item) and a link to the page that completes it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent, DriftRule
from agents.monitoring.replay import golden_mark
from agents.policy.services import kill_switch_set
from agents.registry.migration_path import REHEARSAL_DAYS, migration_path
from agents.registry.services import agent_create, agent_pause, agent_resume
from tests.conftest import logged_in, make_agent

pytestmark = pytest.mark.django_db

KEYS = [
    "observed_traffic",
    "budgets",
    "allowlist",
    "validation",
    "write_approvals",
    "golden_runs",
    "drift_rules",
    "rehearsed",
    "enforce",
]


def state(agent, key: str, **kwargs):
    steps = {step.key: step for step in migration_path(agent=agent, **kwargs)}
    assert list(steps) == KEYS  # the seed's order
    return steps[key]


def fresh(name: str = "support-bot") -> Agent:
    return Agent.objects.get(name=name)


def test_observed_traffic_needs_a_recent_run(agent, start_run):
    step = state(fresh(), "observed_traffic")
    assert not step.done
    assert "No run in the last 30 days" in step.summary
    start_run()
    step = state(fresh(), "observed_traffic")
    assert step.done
    assert step.summary.startswith("1 run(s)")
    assert step.href == f"{reverse('runs:list')}?agent=support-bot"
    # Traffic older than the window does not count.
    assert not state(fresh(), "observed_traffic", now=timezone.now() + timedelta(days=31)).done


def test_budgets_are_set_when_steps_seconds_tool_calls_and_usd_are_bounded(agent, publish_policy):
    step = state(fresh(), "budgets")  # the seed sets no max_usd
    assert not step.done
    assert "max_usd" in step.summary
    assert step.href == reverse("policy:agent_budgets", args=["support-bot"])
    publish_policy(
        'tools: {allow: ["kb.read"]}\n'
        "budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}\n"
        "agents:\n  support-bot: {budgets: {max_usd: 2}}\n"
    )
    assert state(fresh(), "budgets").done


def test_a_default_deny_allowlist_of_its_own(agent, db):
    step = state(fresh(), "allowlist")
    assert not step.done
    assert "No allowlist of its own" in step.summary
    narrowed = agent_create(name="narrow-bot", actor="user:ada", tools=["kb.read"])
    step = state(narrowed, "allowlist")
    assert step.done
    assert "kb.read" in step.summary
    assert step.href == reverse("policy:agent_budgets", args=["narrow-bot"])


def test_validation_needs_argument_and_output_schemas_on_every_allowed_tool(agent, publish_policy):
    step = state(fresh(), "validation")
    assert not step.done
    assert step.href == reverse("policy:tool", args=["http.get"])  # the first one lacking
    schema = "{type: object}"
    publish_policy(
        f'tools:\n  allow: ["kb.read"]\n  definitions:\n    kb.read: {{args_schema: {schema}}}\n'
    )
    step = state(fresh(), "validation")
    assert not step.done
    assert "kb.read (output)" in step.summary
    publish_policy(
        'tools:\n  allow: ["kb.read"]\n  definitions:\n'
        f"    kb.read: {{args_schema: {schema}, output_schema: {schema}}}\n"
    )
    assert state(fresh(), "validation").done


def test_writes_need_approval(agent, publish_policy):
    assert state(fresh(), "write_approvals").done  # the seed allows reads only
    publish_policy(
        'tools:\n  allow: ["kb.read", "email.send"]\n  definitions:\n'
        "    email.send: {effect: write, approval: {required: false}}\n"
    )
    step = state(fresh(), "write_approvals")
    assert not step.done
    assert "email.send" in step.summary
    assert step.href == reverse("policy:tool", args=["email.send"])
    publish_policy('tools:\n  allow: ["kb.read", "email.send"]\n')
    step = state(fresh(), "write_approvals")
    assert step.done
    assert "email.send" in step.summary


def test_golden_runs_of_this_agent(agent, outsider_agent, start_run):
    other = start_run(outsider_agent)
    outsider_agent.api.post_json(f"/api/v1/runs/{other['id']}/finish", {"status": "succeeded"})
    golden_mark(run_id=other["id"], actor="user:ada")
    assert not state(fresh(), "golden_runs").done  # another agent's golden run
    run = start_run()
    agent.api.post_json(f"/api/v1/runs/{run['id']}/finish", {"status": "succeeded"})
    golden_mark(run_id=run["id"], actor="user:ada")
    step = state(fresh(), "golden_runs")
    assert step.done
    assert step.href == reverse("monitoring:golden")


def test_drift_rules_of_the_agent_or_the_fleet(agent):
    assert not state(fresh(), "drift_rules").done
    rule = DriftRule.objects.create(
        name="calls-up", metric="tool_calls_p95", agent=fresh(), relative_threshold=0.5
    )
    step = state(fresh(), "drift_rules")
    assert step.done
    assert "calls-up" in step.summary
    rule.enabled = False
    rule.save()
    assert not state(fresh(), "drift_rules").done  # a disabled rule watches nothing
    DriftRule.objects.create(name="fleet-stops", metric="stop_rate", z_threshold=3)
    assert "Fleet-wide: fleet-stops" in state(fresh(), "drift_rules").summary


def test_kill_switch_and_pause_rehearsed_within_the_window(agent):
    step = state(fresh(), "rehearsed")
    assert not step.done
    assert step.href == reverse("kill_switch")
    kill_switch_set(mode="disable_writes", reason="game day", actor="user:ada")
    kill_switch_set(mode="off", reason="", actor="user:ada")
    step = state(fresh(), "rehearsed")
    assert not step.done  # the agent was never paused
    assert step.href == reverse("agents:detail", args=["support-bot"])
    agent_pause(agent=fresh(), actor="user:olivia", by="olivia", reason="game day")
    agent_resume(agent=fresh(), actor="user:olivia", by="olivia")
    step = state(fresh(), "rehearsed")
    assert step.done
    assert "support-bot paused" in step.summary
    later = timezone.now() + timedelta(days=REHEARSAL_DAYS + 1)
    assert not state(fresh(), "rehearsed", now=later).done  # a rehearsal goes stale


def test_turning_the_kill_switch_off_alone_is_no_rehearsal(agent):
    agent_pause(agent=fresh(), actor="user:olivia", by="olivia", reason="game day")
    kill_switch_set(mode="off", reason="", actor="user:ada")
    assert not state(fresh(), "rehearsed").done


def test_enforce_mode_and_what_enforcing_would_have_done(agent, publish_policy, start_run):
    assert state(fresh(), "enforce").done
    publish_policy(
        'tools: {allow: ["kb.read"]}\nbudgets: {max_tool_calls: 1}\n'
        "agents:\n  support-bot: {mode: observe}\n"
    )
    run = start_run()
    for q in range(2):
        agent.api.post_json(
            f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": q}}
        )
    start_run()
    step = state(fresh(), "enforce")
    assert not step.done
    assert "would have stopped 1 of 2 run(s) (max_tool_calls 1)" in step.summary
    assert step.href == reverse("agents:detail", args=["support-bot"]) + "#mode"


def test_the_page_lists_every_item_with_its_state_and_link(oncall, agent, start_run):
    start_run()
    response = logged_in(oncall).get(reverse("agents:migration_path", args=["support-bot"]))
    assert response.status_code == 200
    html = response.content.decode()
    for key in KEYS:
        assert f'id="step-{key}"' in html
    assert 'id="step-observed_traffic" data-state="done"' in html
    assert 'id="step-golden_runs" data-state="todo"' in html
    assert reverse("monitoring:golden") in html


def test_the_page_needs_a_console_role_and_a_known_agent(outsider, oncall, agent, anonymous):
    url = reverse("agents:migration_path", args=["support-bot"])
    assert logged_in(outsider).get(url).status_code == 403
    assert anonymous.get(url).status_code == 302  # to the login page
    missing = logged_in(oncall).get(reverse("agents:migration_path", args=["nobody"]))
    assert missing.status_code == 404


def test_the_page_takes_a_fixed_number_of_queries(
    oncall, agent, start_run, django_assert_num_queries
):
    client = logged_in(oncall)
    url = reverse("agents:migration_path", args=["support-bot"])
    client.get(url)
    # More agents, runs and rules do not add queries.
    make_agent("a-bot")
    for _ in range(3):
        start_run()
    DriftRule.objects.create(name="fleet-stops", metric="stop_rate", z_threshold=3)
    # the session, the user and roles, the console's banners, the agent, the policy, traffic,
    # golden runs, drift rules, the kill switch and pause rehearsals
    with django_assert_num_queries(14):
        assert client.get(url).status_code == 200
