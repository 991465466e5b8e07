"""Time a run spends waiting for a human decision does not count against max_seconds.

Every path agrees (issue 12, item 15): the decisions of steps and tool calls, the finish, the
reaper, the API's run payload, the run page and the replay all use the run's active time
(elapsed less waiting); the approval's own expiry bounds the wait.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.test import Client
from django.utils import dateformat, timezone

from agents.gateway import services
from agents.models import Run
from agents.monitoring.replay import replay_run
from agents.policy.selectors import policy_current
from approvals.models import ApprovalRequest
from approvals.services import approval_decide, approvals_expire_due

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "email.send"]
  definitions:
    email.send:
      effect: write
      approval: {timeout_seconds: 60}
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}
writes: {require_approval: true}
"""


class Clock:
    """The server's clock (``django.utils.timezone.now``), moved by the test."""

    def __init__(self) -> None:
        self.now: datetime = timezone.now()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(timezone, "now", lambda: clock.now)
    return clock


@pytest.fixture
def policy(publish_policy):
    return publish_policy(POLICY)


def step(agent, run_id) -> dict:
    response = agent.api.post_json(f"/api/v1/runs/{run_id}/steps", {"tokens_in": 10})
    assert response.status_code == 200, response.content
    return response.json()


def ask(agent, run_id, tool, args) -> dict:
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args}
    )
    assert response.status_code == 200, response.content
    return response.json()


def finish(agent, run_id, status="succeeded"):
    return agent.api.post_json(f"/api/v1/runs/{run_id}/finish", {"status": status})


def wait_for_reviewer(agent, run_id, clock, reviewer, seconds, verdict="approve") -> dict:
    """Ask for an email.send, let the reviewer take ``seconds``, then decide."""
    pending = ask(agent, run_id, "email.send", {"to": "a@example.com"})
    assert pending["decision"] == "pending_approval"
    clock.advance(seconds)
    approval_decide(
        request_id=pending["approval"]["id"],
        reviewer=reviewer.user,
        verdict=verdict,
        comment="no" if verdict == "reject" else "",
    )
    return pending


def test_a_slow_reviewer_does_not_use_up_the_runs_time(agent, start_run, policy, clock, reviewer):
    """8 s of review on a 4 s budget: the write runs and the next step still continues."""
    run = start_run(budgets={"max_seconds": 4})
    clock.advance(1)
    pending = wait_for_reviewer(agent, run["id"], clock, reviewer, 8)
    clock.advance(1)
    reported = agent.api.post_json(
        f"/api/v1/tool-calls/{pending['id']}/result", {"ok": True, "output": {"sent": True}}
    )
    assert reported.json()["stop_reason"] is None

    answer = step(agent, run["id"])

    assert (answer["decision"], answer["stop_reason"]) == ("continue", None)
    usage = answer["run"]["usage"]
    assert usage["seconds"] == pytest.approx(2, abs=0.01)
    assert usage["waiting_seconds"] == pytest.approx(8, abs=0.01)
    assert finish(agent, run["id"]).json()["stop_reason"] == "ok"


def test_active_time_still_runs_out(agent, start_run, policy, clock, reviewer):
    run = start_run(budgets={"max_seconds": 4})
    wait_for_reviewer(agent, run["id"], clock, reviewer, 30)
    clock.advance(3)
    assert step(agent, run["id"])["decision"] == "continue"
    clock.advance(2)  # 5 s active

    assert step(agent, run["id"])["stop_reason"] == "max_seconds"
    assert ask(agent, run["id"], "kb.read", {})["stop_reason"] == "max_seconds"


def test_a_run_past_its_active_time_cannot_finish_ok(agent, start_run, policy, clock):
    """119 s on a 90 s budget with no wait: the finish stops the run with max_seconds."""
    run = start_run()
    clock.advance(119)

    response = finish(agent, run["id"])

    assert response.status_code == 409, response.content
    assert response.json()["stop_reason"] == "max_seconds"
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason) == ("stopped", "max_seconds")


def test_a_run_that_waited_finishes_ok_past_its_wall_clock_budget(
    agent, start_run, policy, clock, reviewer
):
    run = start_run()  # 90 s
    clock.advance(30)
    wait_for_reviewer(agent, run["id"], clock, reviewer, 59)
    clock.advance(30)  # 119 s elapsed, 60 s active

    response = finish(agent, run["id"])

    assert response.status_code == 200, response.content
    assert response.json()["stop_reason"] == "ok"
    assert response.json()["usage"]["seconds"] == pytest.approx(60, abs=0.01)
    assert response.json()["usage"]["waiting_seconds"] == pytest.approx(59, abs=0.01)


def test_the_reaper_counts_active_time_only(agent, start_run, policy, clock, reviewer, settings):
    settings.OPSCONSOLE_REAP_GRACE_SECONDS = 0
    waited = start_run(budgets={"max_seconds": 10})
    silent = start_run(budgets={"max_seconds": 10})
    wait_for_reviewer(agent, waited["id"], clock, reviewer, 20)  # approved: running again
    clock.advance(5)  # waited: 5 s active of 25 s; silent: 25 s active

    assert services.runs_reap_silent(grace_seconds=0) == 1

    assert Run.objects.get(pk=waited["id"]).status == "running"
    assert Run.objects.get(pk=silent["id"]).stop_reason == "max_seconds"
    clock.advance(6)
    assert services.runs_reap_silent(grace_seconds=0) == 1
    assert Run.objects.get(pk=waited["id"]).stop_reason == "max_seconds"


def test_the_approvals_expiry_bounds_the_wait(agent, start_run, policy, clock):
    """Nobody decides: the request expires at its own timeout, not at max_seconds."""
    run = start_run(budgets={"max_seconds": 10})
    clock.advance(2)
    pending = ask(agent, run["id"], "email.send", {"to": "x"})
    clock.advance(59)
    assert services.runs_reap_silent(grace_seconds=0) == 0
    assert approvals_expire_due() == 0
    clock.advance(1)

    assert approvals_expire_due() == 1

    db_run = Run.objects.get(pk=run["id"])
    assert db_run.stop_reason == "approval_timeout:email.send"
    assert ApprovalRequest.objects.get(pk=pending["approval"]["id"]).status == "expired"
    assert db_run.seconds == pytest.approx(2, abs=0.01)
    assert db_run.waiting_seconds == pytest.approx(60, abs=0.01)
    clock.advance(100)  # an ended run's times no longer move
    assert Run.objects.get(pk=run["id"]).usage()["seconds"] == pytest.approx(2, abs=0.01)


def test_a_run_cancelled_while_waiting_keeps_its_wait(agent, start_run, policy, clock):
    run = start_run()
    clock.advance(3)
    ask(agent, run["id"], "email.send", {"to": "x"})
    clock.advance(7)
    services.run_cancel(run_id=run["id"], actor="user:olivia")

    usage = Run.objects.get(pk=run["id"]).usage()
    assert usage["seconds"] == pytest.approx(3, abs=0.01)
    assert usage["waiting_seconds"] == pytest.approx(7, abs=0.01)


def test_the_api_and_the_run_page_show_active_and_waiting_time(
    agent, start_run, policy, clock, oncall, reviewer
):
    run = start_run()
    clock.advance(4)
    pending = ask(agent, run["id"], "email.send", {"to": "x"})
    clock.advance(6)

    waiting = agent.api.get(f"/api/v1/runs/{run['id']}").json()
    assert waiting["status"] == "waiting_approval"
    assert waiting["usage"]["seconds"] == pytest.approx(4, abs=0.01)
    assert waiting["usage"]["waiting_seconds"] == pytest.approx(6, abs=0.01)

    page = Client()
    page.force_login(oncall.user)
    body = page.get(f"/runs/{run['id']}/").content.decode()
    assert 'data-field="active-seconds">4s<' in body
    assert 'data-field="waiting-seconds">6s<' in body
    assert "data-active" not in body  # the browser's clock does not tick while waiting

    approval_decide(request_id=pending["approval"]["id"], reviewer=reviewer.user, verdict="approve")
    clock.advance(3)
    body = page.get(f"/runs/{run['id']}/").content.decode()
    assert 'data-field="active-seconds">7s<' in body
    assert 'data-field="waiting-seconds">6s<' in body
    # The browser's clock ticks from where the active time starts: the start plus the waits.
    db_run = Run.objects.get(pk=run["id"])
    assert db_run.active_clock_start == db_run.started_at + timedelta(seconds=6)
    assert f'data-started-at="{dateformat.format(db_run.active_clock_start, "c")}"' in body
    assert "data-active" in body


def test_replay_leaves_the_wait_out_too(agent, start_run, policy, clock, reviewer):
    """A recorded run that waited 8 s on a 4 s budget replays as it ran: no max_seconds."""
    run = start_run(budgets={"max_seconds": 4})
    clock.advance(1)
    pending = wait_for_reviewer(agent, run["id"], clock, reviewer, 8)
    agent.api.post_json(f"/api/v1/tool-calls/{pending['id']}/result", {"ok": True, "output": {}})
    clock.advance(1)
    step(agent, run["id"])
    assert finish(agent, run["id"]).json()["stop_reason"] == "ok"

    result = replay_run(Run.objects.get(pk=run["id"]), policy_current())

    assert result.new_stop_reason == "ok", result.differences()
    assert not result.changed, result.differences()


def test_overlapping_requests_make_one_wait_until_the_last_is_decided(
    agent, start_run, policy, clock, reviewer
):
    run = start_run()
    clock.advance(1)
    first = ask(agent, run["id"], "email.send", {"to": "a"})
    clock.advance(2)
    second = ask(agent, run["id"], "email.send", {"to": "b"})  # asked while waiting
    clock.advance(3)
    approval_decide(request_id=first["approval"]["id"], reviewer=reviewer.user, verdict="approve")
    assert Run.objects.get(pk=run["id"]).status == "waiting_approval"  # b is still pending
    clock.advance(4)
    approval_decide(request_id=second["approval"]["id"], reviewer=reviewer.user, verdict="approve")
    clock.advance(5)

    db_run = Run.objects.get(pk=run["id"])
    assert db_run.status == "running"
    assert db_run.waiting_seconds == pytest.approx(9, abs=0.01)
    assert db_run.seconds == pytest.approx(6, abs=0.01)
