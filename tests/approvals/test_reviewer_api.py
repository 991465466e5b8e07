"""The reviewer and operator API: approvals queue and decisions, cancels and the kill switch."""

from __future__ import annotations

import pytest

from agents.models import KillSwitch, Run
from approvals.models import ApprovalDecision, ApprovalRequest
from opsconsole.models import AuditEntry

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "email.send"]
  definitions:
    email.send: {effect: write}
"""


@pytest.fixture
def pending(agent, start_run, publish_policy):
    """A run waiting for approval of one email.send."""
    publish_policy(POLICY)
    run = start_run()
    answer = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls",
        {"tool": "email.send", "args": {"to": "a@example.com"}},
    ).json()
    assert answer["decision"] == "pending_approval"
    return answer


def test_the_queue_lists_pending_requests_oldest_first(pending, agent, start_run, oncall):
    run = start_run()
    second = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {"n": 2}}
    ).json()
    response = oncall.api.get("/api/v1/approvals?status=pending")
    assert response.status_code == 200
    ids = [item["id"] for item in response.json()["results"]]
    assert ids == [pending["approval"]["id"], second["approval"]["id"]]
    first = response.json()["results"][0]
    assert (first["tool"], first["args"], first["agent"]) == (
        "email.send",
        {"to": "a@example.com"},
        "support-bot",
    )


def test_the_queue_paginates(pending, agent, start_run, oncall):
    for i in range(3):
        run = start_run()
        agent.api.post_json(
            f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {"n": i}}
        )
    page = oncall.api.get("/api/v1/approvals?limit=2").json()
    assert len(page["results"]) == 2
    rest = oncall.api.get(f"/api/v1/approvals?limit=2&after={page['next_after']}").json()
    assert len(rest["results"]) == 2
    assert rest["next_after"] is None
    assert {r["id"] for r in page["results"]}.isdisjoint({r["id"] for r in rest["results"]})


@pytest.mark.parametrize("query", ["status=bogus", "limit=0", "limit=x", "after=x"])
def test_bad_queue_queries_are_400(oncall, query):
    assert oncall.api.get(f"/api/v1/approvals?{query}").status_code == 400


def test_a_reviewer_approves_through_the_api(pending, reviewer, agent):
    request_id = pending["approval"]["id"]
    response = reviewer.api.post_json(
        f"/api/v1/approvals/{request_id}/decision", {"verdict": "approve"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "approved"
    assert ApprovalRequest.objects.get(pk=request_id).status == "approved"
    assert (
        AuditEntry.objects.filter(action="approval.approve", target_id=str(request_id)).count() == 1
    )
    assert agent.api.get(f"/api/v1/tool-calls/{pending['id']}").json()["decision"] == "allow"


def test_rejecting_needs_a_comment(pending, reviewer):
    request_id = pending["approval"]["id"]
    response = reviewer.api.post_json(
        f"/api/v1/approvals/{request_id}/decision", {"verdict": "reject"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "comment_required"
    assert ApprovalRequest.objects.get(pk=request_id).status == "pending"
    assert ApprovalDecision.objects.count() == 0


def test_a_second_decision_is_a_409(pending, reviewer, second_reviewer):
    request_id = pending["approval"]["id"]
    assert (
        reviewer.api.post_json(
            f"/api/v1/approvals/{request_id}/decision", {"verdict": "approve"}
        ).status_code
        == 200
    )
    late = second_reviewer.api.post_json(
        f"/api/v1/approvals/{request_id}/decision", {"verdict": "reject", "comment": "no"}
    )
    assert late.status_code == 409
    assert late.json()["error"] == "already_decided"
    assert ApprovalRequest.objects.get(pk=request_id).status == "approved"


@pytest.mark.parametrize(
    "body", [{}, {"verdict": "maybe"}, {"verdict": "approve", "comment": 5 * "x" * 1000}]
)
def test_bad_decisions_are_400_and_change_nothing(pending, reviewer, body):
    request_id = pending["approval"]["id"]
    response = reviewer.api.post_json(f"/api/v1/approvals/{request_id}/decision", body)
    assert response.status_code == 400
    assert ApprovalRequest.objects.get(pk=request_id).status == "pending"


def test_only_reviewers_decide(pending, oncall, outsider, anonymous, agent):
    path = f"/api/v1/approvals/{pending['approval']['id']}/decision"
    assert oncall.api.post_json(path, {"verdict": "approve"}).status_code == 403
    assert outsider.api.post_json(path, {"verdict": "approve"}).status_code == 403
    assert anonymous.post_json(path, {"verdict": "approve"}).status_code == 401
    assert (
        agent.api.post_json(path, {"verdict": "approve"}).status_code == 403
    )  # an agent never approves itself
    assert ApprovalRequest.objects.get(pk=pending["approval"]["id"]).status == "pending"


def test_the_queue_needs_a_role(outsider, anonymous, agent):
    assert outsider.api.get("/api/v1/approvals").status_code == 403
    assert anonymous.get("/api/v1/approvals").status_code == 401
    assert agent.api.get("/api/v1/approvals").status_code == 403


def test_deciding_an_unknown_request_is_a_404(reviewer):
    assert (
        reviewer.api.post_json(
            "/api/v1/approvals/999999/decision", {"verdict": "approve"}
        ).status_code
        == 404
    )


def test_wrong_method_is_405(reviewer, pending):
    assert (
        reviewer.api.get(f"/api/v1/approvals/{pending['approval']['id']}/decision").status_code
        == 405
    )
    assert reviewer.api.post_json("/api/v1/approvals", {}).status_code == 405


# --- cancel ---------------------------------------------------------------------------------------


def test_oncall_cancels_a_run_and_the_agent_sees_cancelled(agent, start_run, oncall):
    run = start_run()
    response = oncall.api.post_json(f"/api/v1/runs/{run['id']}/cancel", {"reason": "looks stuck"})
    assert response.status_code == 200
    assert response.json()["stop_reason"] == "cancelled"
    assert Run.objects.get(pk=run["id"]).stop_reason == "cancelled"
    answer = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    ).json()
    assert (answer["decision"], answer["stop_reason"]) == ("stop", "cancelled")
    assert AuditEntry.objects.filter(action="run.cancel", target_id=str(run["id"])).count() == 1
    again = oncall.api.post_json(f"/api/v1/runs/{run['id']}/cancel", {})
    assert again.status_code == 409


def test_cancel_is_refused_to_outsiders_and_agents(agent, start_run, outsider, anonymous):
    run = start_run()
    assert outsider.api.post_json(f"/api/v1/runs/{run['id']}/cancel", {}).status_code == 403
    assert anonymous.post_json(f"/api/v1/runs/{run['id']}/cancel", {}).status_code == 401
    assert agent.api.post_json(f"/api/v1/runs/{run['id']}/cancel", {}).status_code == 403
    assert Run.objects.get(pk=run["id"]).status == "running"


def test_people_with_a_role_can_read_any_run(agent, start_run, oncall, outsider):
    run = start_run()
    assert oncall.api.get(f"/api/v1/runs/{run['id']}").json()["agent"] == "support-bot"
    assert outsider.api.get(f"/api/v1/runs/{run['id']}").status_code == 403


# --- kill switch ----------------------------------------------------------------------------------


def test_an_admin_turns_the_kill_switch_on_with_a_reason(admin, oncall):
    response = admin.api.put_json(
        "/api/v1/kill-switch", {"mode": "disable_writes", "reason": "vendor outage"}
    )
    assert response.status_code == 200
    assert response.json()["set_by"] == "user:ada-admin"
    switch = KillSwitch.objects.get(pk=1)
    assert (switch.mode, switch.reason) == ("disable_writes", "vendor outage")
    assert AuditEntry.objects.filter(action="kill_switch.set").count() == 1
    assert oncall.api.get("/api/v1/kill-switch").json()["mode"] == "disable_writes"


def test_turning_the_kill_switch_on_needs_a_reason(admin):
    response = admin.api.put_json("/api/v1/kill-switch", {"mode": "stop_all"})
    assert response.status_code == 422
    assert response.json()["error"] == "reason_required"
    assert KillSwitch.objects.get(pk=1).mode == "off"


def test_only_admins_set_the_kill_switch(reviewer, oncall, outsider, anonymous, agent):
    body = {"mode": "stop_all", "reason": "x"}
    assert reviewer.api.put_json("/api/v1/kill-switch", body).status_code == 403
    assert oncall.api.put_json("/api/v1/kill-switch", body).status_code == 403
    assert outsider.api.put_json("/api/v1/kill-switch", body).status_code == 403
    assert anonymous.put_json("/api/v1/kill-switch", body).status_code == 401
    assert agent.api.put_json("/api/v1/kill-switch", body).status_code == 403
    assert KillSwitch.objects.get(pk=1).mode == "off"


def test_a_bad_kill_switch_mode_is_400(admin):
    assert (
        admin.api.put_json("/api/v1/kill-switch", {"mode": "panic", "reason": "x"}).status_code
        == 400
    )
    assert KillSwitch.objects.get(pk=1).mode == "off"


def test_a_revoked_user_token_is_refused(oncall):
    from django.utils import timezone

    oncall.user.api_tokens.update(revoked_at=timezone.now())
    assert oncall.api.get("/api/v1/kill-switch").status_code == 401
