"""The approvals queue: everyone with a role sees it, reviewers decide, in place or by plain POST."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.models import Run, RunStatus, ToolCall
from approvals.models import ApprovalDecision, ApprovalRequest, ApprovalStatus
from tests.conftest import logged_in

POLICY = """
tools:
  allow: ["kb.read", "email.send", "ticket.update"]
  definitions:
    ticket.update: {effect: write, approval: {reviewers: 2, timeout_seconds: 600}}
budgets: {max_steps: 30, max_seconds: 900, max_tool_calls: 15}
writes: {require_approval: true, timeout_seconds: 900}
"""


@pytest.fixture
def pending(agent, start_run, publish_policy):
    """Ask for a write that needs approval; returns (run, tool call answer, request)."""
    publish_policy(POLICY)

    def ask(tool: str = "email.send", args: dict | None = None, task: str = "reply to a customer"):
        run = start_run(task=task)
        agent.api.post_json(
            f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": "policy"}}
        )
        answer = agent.api.post_json(
            f"/api/v1/runs/{run['id']}/tool-calls",
            {"tool": tool, "args": args or {"to": "ann@example.com", "body": "Refund issued"}},
        ).json()
        assert answer["decision"] == "pending_approval", answer
        return run, answer, ApprovalRequest.objects.get(tool_call_id=answer["id"])

    return ask


def decide(client, request_id: int, verdict: str, comment: str = "", **extra):
    return client.post(
        reverse("approvals:decide", args=[request_id]),
        {"verdict": verdict, "comment": comment},
        **extra,
    )


def test_the_queue_shows_each_request_oldest_first_with_its_context(reviewer, pending):
    _, _, first = pending(task="first task")
    _, _, second = pending(args={"to": "bob@example.com", "body": "Hello"}, task="second task")
    response = logged_in(reviewer).get(reverse("approvals:queue"))
    page = response.content.decode()
    assert response.status_code == 200
    assert [a.pk for a in response.context["approvals"]] == [first.pk, second.pk]
    assert page.index(f'id="approval-{first.pk}"') < page.index(f'id="approval-{second.pk}"')
    assert "support-bot" in page
    assert f'href="{reverse("runs:detail", args=[first.run_id])}"' in page
    assert "email.send" in page
    assert "&quot;to&quot;: &quot;bob@example.com&quot;" in page  # the exact arguments
    assert "left</span>" in page and "data-expires-at" in page  # the time left
    assert "Preceding trace" in page and "kb.read" in page  # the run's trace before the write
    assert "Approve" in page and "Reject" in page


def test_on_call_sees_the_queue_but_gets_no_decision_buttons(oncall, pending):
    _, _, request = pending()
    page = logged_in(oncall).get(reverse("approvals:queue")).content.decode()
    assert f'id="approval-{request.pk}"' in page
    assert reverse("approvals:decide", args=[request.pk]) not in page
    assert "Only reviewers decide" in page


@pytest.mark.parametrize("persona", ["oncall", "outsider"])
def test_people_who_are_not_reviewers_cannot_decide(request, persona, pending):
    _, _, approval = pending()
    response = decide(logged_in(request.getfixturevalue(persona)), approval.pk, "approve")
    assert response.status_code == 403
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING
    assert not ApprovalDecision.objects.exists()


def test_anonymous_people_cannot_decide(db, pending):
    _, _, approval = pending()
    response = decide(Client(), approval.pk, "approve")
    assert response.status_code == 302
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING


def test_deciding_needs_a_post(reviewer, pending):
    _, _, approval = pending()
    response = logged_in(reviewer).get(reverse("approvals:decide", args=[approval.pk]))
    assert response.status_code == 405


@pytest.mark.parametrize("persona", ["reviewer", "admin"])
def test_a_reviewer_approves_and_the_waiting_agent_may_proceed(request, persona, agent, pending):
    run, answer, approval = pending()
    response = decide(logged_in(request.getfixturevalue(persona)), approval.pk, "approve", "ok")
    assert response.status_code == 302
    assert response["Location"] == reverse("approvals:queue")
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.APPROVED
    assert ToolCall.objects.get(pk=answer["id"]).decision == "allow"
    polled = agent.api.get(f"/api/v1/tool-calls/{answer['id']}").json()
    assert polled["decision"] == "allow"
    assert Run.objects.get(pk=run["id"]).status == RunStatus.RUNNING


def test_approving_in_place_with_htmx_answers_with_the_settled_card(reviewer, pending):
    _, _, approval = pending()
    response = decide(logged_in(reviewer), approval.pk, "approve", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith(
        f'<article class="card approval settled" id="approval-{approval.pk}"'
    )
    assert "the waiting agent has its answer" in body
    assert "<html" not in body


def test_rejecting_needs_a_comment_and_changes_nothing_without_one(reviewer, pending):
    _, _, approval = pending()
    client = logged_in(reviewer)
    for extra in ({}, {"HTTP_HX_REQUEST": "true"}):
        response = decide(client, approval.pk, "reject", "   ", **extra)
        assert response.status_code == 422
        assert b"A comment is required to reject." in response.content
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING
    assert not ApprovalDecision.objects.exists()


def test_a_rejection_with_a_comment_stops_the_run(reviewer, agent, pending):
    run, answer, approval = pending()
    response = decide(logged_in(reviewer), approval.pk, "reject", "wrong customer")
    assert response.status_code == 302
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.REJECTED
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.stop_reason) == ("stopped", "approval_rejected:email.send")
    assert ApprovalDecision.objects.get().comment == "wrong customer"


def test_an_unknown_verdict_is_a_form_error(reviewer, pending):
    _, _, approval = pending()
    response = decide(logged_in(reviewer), approval.pk, "maybe")
    assert response.status_code == 422
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING


def test_a_two_reviewer_tool_shows_progress_and_refuses_the_same_person_twice(
    reviewer, second_reviewer, pending
):
    _, answer, approval = pending(tool="ticket.update", args={"id": 7, "state": "closed"})
    first = logged_in(reviewer)
    response = decide(first, approval.pk, "approve", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert b"1 of 2 reviewers" in response.content
    assert b"rita-reviewer <strong>approved</strong>" in response.content
    assert b"waits for another reviewer" in response.content
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.PENDING

    # The same person again, from a stale tab: refused as a form error, nothing recorded.
    again = decide(first, approval.pk, "approve", HTTP_HX_REQUEST="true")
    assert again.status_code == 409
    assert b"needs a different second reviewer" in again.content
    assert ApprovalDecision.objects.count() == 1
    # Their own queue no longer offers them the buttons for it.
    page = first.get(reverse("approvals:queue")).content.decode()
    assert "You have approved; it needs another reviewer." in page

    done = decide(logged_in(second_reviewer), approval.pk, "approve")
    assert done.status_code == 302
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.APPROVED
    assert ToolCall.objects.get(pk=answer["id"]).decision == "allow"


def test_a_request_decided_elsewhere_is_refused_with_a_clear_message(
    reviewer, second_reviewer, pending
):
    _, _, approval = pending()
    decide(logged_in(second_reviewer), approval.pk, "approve")
    response = decide(logged_in(reviewer), approval.pk, "reject", "no", HTTP_HX_REQUEST="true")
    assert response.status_code == 409
    assert b"Someone else decided this request first." in response.content
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.APPROVED
    plain = decide(logged_in(reviewer), approval.pk, "approve")
    assert plain.status_code == 409
    assert b"Someone else decided" in plain.content


def test_an_expired_request_cannot_be_approved(reviewer, pending):
    run, _, approval = pending()
    ApprovalRequest.objects.filter(pk=approval.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = decide(logged_in(reviewer), approval.pk, "approve")
    assert response.status_code == 409
    assert b"expired before it was decided" in response.content
    approval.refresh_from_db()
    assert approval.status == ApprovalStatus.EXPIRED
    assert Run.objects.get(pk=run["id"]).stop_reason == "approval_timeout:email.send"


def test_deciding_an_unknown_request_is_a_404(reviewer, db):
    assert decide(logged_in(reviewer), 999999, "approve").status_code == 404


def test_the_live_queue_fetches_only_newer_cards(reviewer, pending):
    _, _, first = pending()
    _, _, second = pending()
    response = logged_in(reviewer).get(
        reverse("approvals:queue"), {"newer_than": first.pk}, HTTP_HX_REQUEST="true"
    )
    body = response.content.decode()
    assert f'id="approval-{second.pk}"' in body
    assert f'id="approval-{first.pk}"' not in body
    assert "<html" not in body


def test_the_progress_fragment_and_the_badge(reviewer, pending):
    _, _, approval = pending(tool="ticket.update", args={"id": 1})
    client = logged_in(reviewer)
    decide(client, approval.pk, "approve")
    progress = client.get(
        reverse("approvals:card", args=[approval.pk]),
        {"fragment": "progress"},
        HTTP_HX_REQUEST="true",
    )
    assert (
        progress.content.decode()
        .lstrip()
        .startswith(f'<div class="progress" id="approval-{approval.pk}-progress"')
    )
    assert b"1 of 2 reviewers" in progress.content
    badge = client.get(reverse("approvals:badge"))
    assert b">1</span>" in badge.content


def test_the_history_lists_decided_requests_with_who_and_why(reviewer, pending):
    _, _, approved = pending()
    _, _, rejected = pending()
    client = logged_in(reviewer)
    decide(client, approved.pk, "approve", "looks right")
    decide(client, rejected.pk, "reject", "wrong address")
    response = client.get(reverse("approvals:history"))
    page = response.content.decode()
    assert [a.pk for a in response.context["approvals"]] == [rejected.pk, approved.pk]
    assert "rita-reviewer reject (“wrong address”)" in page
    assert "looks right" in page
    only = client.get(reverse("approvals:history"), {"status": "approved"})
    assert [a.pk for a in only.context["approvals"]] == [approved.pk]


def test_the_queue_costs_the_same_queries_for_1_or_8_requests(
    reviewer, pending, django_assert_num_queries
):
    client = logged_in(reviewer)
    pending()
    client.get(reverse("approvals:queue"))
    # session, user, role, kill switch, nav count, degraded tools, paused agents, requests,
    # decisions, trace context, page count
    with django_assert_num_queries(11):
        client.get(reverse("approvals:queue"))
    for _ in range(7):
        pending()
    with django_assert_num_queries(11):
        response = client.get(reverse("approvals:queue"))
    assert len(response.context["approvals"]) == 8


def test_history_pages_by_decision_time(reviewer, pending):
    from approvals import views

    client = logged_in(reviewer)
    ids = []
    for _ in range(3):
        _, _, approval = pending()
        decide(client, approval.pk, "approve")
        ids.append(approval.pk)
    views.HISTORY_PAGE_SIZE, original = 2, views.HISTORY_PAGE_SIZE
    try:
        first = client.get(reverse("approvals:history"))
        cursor = first.context["next_cursor"]
        second = client.get(reverse("approvals:history"), {"before": cursor})
    finally:
        views.HISTORY_PAGE_SIZE = original
    seen = [a.pk for a in first.context["approvals"]] + [a.pk for a in second.context["approvals"]]
    assert seen == list(reversed(ids))


def test_a_decided_request_has_its_own_page(oncall, reviewer, pending):
    _, _, approval = pending()
    decide(logged_in(reviewer), approval.pk, "reject", "not this one")
    response = logged_in(oncall).get(reverse("approvals:card", args=[approval.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "<html" in page and "Rejected" in page and "not this one" in page
    assert logged_in(oncall).get(reverse("approvals:card", args=[999999])).status_code == 404
