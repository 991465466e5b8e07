"""The kill switch says what it will do: which tools each mode turns off, and which runs stop.

Issue 14, item 5: in the incident the default mode (``disable_writes``) left the runaway
``browser.open`` (an expensive read) running, the page did not say so, and the confirmation of
``disable_expensive`` counted runs that never call an expensive tool among those that stop.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.gateway.decisions import tool_call_verdict
from agents.models import Decision, KillSwitchMode, Run
from agents.policy.selectors import kill_switch_impact, policy_current
from tests.conftest import logged_in

RUNAWAY_POLICY = (
    'tools: {allow: ["kb.read", "email.send", "browser.open"], definitions: '
    "{browser.open: {effect: read, expensive: true, cost_usd: 0.7}}}"
)
READS_ONLY_POLICY = 'tools: {allow: ["kb.read", "search.read"]}'


def mode_entry(page: str, mode: str) -> str:
    """The part of the kill switch page that describes one mode."""
    return page.split(f'id="mode-{mode}"')[1].split("</dd>")[0]


def call(agent, run_id: int, tool: str, args: dict | None = None) -> dict:
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args or {}}
    )
    assert response.status_code == 200, response.content
    return response.json()


# --- the mode list ----------------------------------------------------------------------------


def test_each_mode_names_the_tools_of_the_policy_in_force_it_turns_off(oncall, publish_policy):
    publish_policy(RUNAWAY_POLICY)
    page = logged_in(oncall).get(reverse("kill_switch")).content.decode()

    writes = mode_entry(page, "disable_writes")
    assert "<code>email.send</code>" in writes
    assert "browser.open" not in writes  # a read: the default mode leaves it running
    assert "kb.read" not in writes

    expensive = mode_entry(page, "disable_expensive")
    assert "<code>browser.open</code>" in expensive
    assert "email.send" not in expensive
    assert "kb.read" not in expensive

    assert "every run stops" in mode_entry(page, "stop_all")
    assert "turns off no tool" in mode_entry(page, "off")


def test_a_mode_that_turns_off_nothing_says_so(oncall, publish_policy):
    publish_policy(READS_ONLY_POLICY)
    page = logged_in(oncall).get(reverse("kill_switch")).content.decode()
    for mode in ("disable_writes", "disable_expensive"):
        entry = mode_entry(page, mode)
        assert "turns off no tool of the policy in force" in entry, mode
        assert "<li>" not in entry


def test_the_page_lists_exactly_the_tools_the_gateway_refuses_in_each_mode(
    agent, start_run, publish_policy
):
    """The page and the gateway share one rule: listed means refused with kill_switch."""
    publish_policy(RUNAWAY_POLICY)
    policy = policy_current()
    run = Run.objects.get(pk=start_run()["id"])
    for mode in KillSwitchMode.values:
        listed = set(policy.tools_stopped_by(mode))
        for tool in policy.document["tools"]["allow"]:
            verdict = tool_call_verdict(
                policy=policy,
                tool=tool,
                args={},
                agent_name=agent.agent.name,
                agent_enabled=True,
                kill_mode=mode,
                run=run,
                repeats=lambda: 0,
                calls_of_tool=lambda: 0,
                degraded=lambda rule: False,
            )
            stopped = verdict.decision == Decision.STOP and verdict.stop_reason == "kill_switch"
            assert stopped == (tool in listed), (mode, tool)
    assert policy.tools_stopped_by("disable_writes") == ["email.send"]
    assert policy.tools_stopped_by("disable_expensive") == ["browser.open"]
    assert sorted(policy.tools_stopped_by("stop_all")) == ["browser.open", "email.send", "kb.read"]
    assert policy.tools_stopped_by("off") == []


# --- the confirmation -------------------------------------------------------------------------


def test_disable_expensive_counts_only_runs_that_called_an_expensive_tool(
    admin, agent, start_run, publish_policy
):
    publish_policy(RUNAWAY_POLICY)
    runaway = start_run()
    call(agent, runaway["id"], "browser.open", {"url": "https://vendor.example/1"})
    call(agent, runaway["id"], "browser.open", {"url": "https://vendor.example/2"})
    reader = start_run()
    call(agent, reader["id"], "kb.read", {"q": "refunds"})
    start_run()  # has called nothing yet

    impact = kill_switch_impact(mode="disable_expensive")
    assert (impact.active_runs, impact.stopping_runs) == (3, 1)
    assert impact.stopping_waiting_runs == 0

    page = (
        logged_in(admin)
        .post(reverse("kill_switch"), {"mode": "disable_expensive", "reason": "vendor bill"})
        .content.decode()
    )
    assert "1 of 3 active runs has called a tool this mode turns off" in page
    assert "stops with <code>kill_switch</code> at its next call to one" in page
    assert "The other 2 keep running" in page


def test_disable_writes_counts_a_run_waiting_for_approval_of_a_write(
    admin, agent, start_run, publish_policy
):
    publish_policy(RUNAWAY_POLICY)
    writer = start_run()
    pending = call(agent, writer["id"], "email.send", {"to": "customer@example.com"})
    assert pending["decision"] == "pending_approval"
    runaway = start_run()
    call(agent, runaway["id"], "browser.open", {"url": "https://vendor.example/1"})

    impact = kill_switch_impact(mode="disable_writes")
    assert (impact.active_runs, impact.waiting_runs) == (2, 1)
    assert (impact.stopping_runs, impact.stopping_waiting_runs) == (1, 1)

    page = (
        logged_in(admin)
        .post(reverse("kill_switch"), {"mode": "disable_writes", "reason": "mail outage"})
        .content.decode()
    )
    assert "1 of 2 active runs has called a tool this mode turns off" in page
    assert "1 waiting for approval of one" in page
    assert "The other 1 keeps running" in page


def test_a_run_that_already_stopped_is_not_counted(agent, start_run, publish_policy):
    publish_policy(RUNAWAY_POLICY)
    finished = start_run()
    call(agent, finished["id"], "browser.open", {"url": "https://vendor.example/1"})
    response = agent.api.post_json(f"/api/v1/runs/{finished['id']}/finish", {"status": "succeeded"})
    assert response.status_code == 200, response.content

    impact = kill_switch_impact(mode="disable_expensive")
    assert (impact.active_runs, impact.stopping_runs) == (0, 0)


def test_stop_all_counts_every_active_run(agent, start_run, publish_policy):
    publish_policy(RUNAWAY_POLICY)
    start_run()
    reader = start_run()
    call(agent, reader["id"], "kb.read", {"q": "refunds"})

    impact = kill_switch_impact(mode="stop_all")
    assert (impact.active_runs, impact.stopping_runs, impact.runs_stop_now) == (2, 2, True)


def test_when_no_run_will_stop_the_confirmation_says_so(admin, agent, start_run, publish_policy):
    publish_policy(RUNAWAY_POLICY)
    reader = start_run()
    call(agent, reader["id"], "kb.read", {"q": "refunds"})
    page = (
        logged_in(admin)
        .post(reverse("kill_switch"), {"mode": "disable_expensive", "reason": "vendor bill"})
        .content.decode()
    )
    assert "None of the 1 active run has called a tool this mode turns off" in page


@pytest.mark.parametrize("runs", [1, 6])
def test_the_impact_read_costs_the_same_queries_however_many_runs(
    agent, start_run, publish_policy, django_assert_num_queries, runs
):
    publish_policy(RUNAWAY_POLICY)
    for index in range(runs):
        run = start_run()
        call(agent, run["id"], "browser.open", {"url": f"https://vendor.example/{index}"})
        call(agent, run["id"], "kb.read", {"q": f"q{index}"})
    policy_current()  # the parsed policy is cached per version; the read asks which is latest
    with django_assert_num_queries(2):
        impact = kill_switch_impact(mode="disable_expensive")
    assert impact.stopping_runs == runs
    assert impact.dark_tools == ["browser.open"]
