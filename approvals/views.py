"""The approvals queue: everyone with a role sees it; reviewers decide, in place with htmx."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.middleware import HtmxDetails

from approvals import selectors, services
from approvals.forms import DecisionForm, HistoryFilterForm
from approvals.models import ApprovalRequest, ApprovalStatus
from opsconsole import roles
from opsconsole.decorators import role_required
from opsconsole.errors import NotFound, ServiceError
from opsconsole.pages import not_found
from opsconsole.pagination import KeysetCursor

QUEUE_SIZE = 100
HISTORY_PAGE_SIZE = 50

# What a reviewer is told when their decision could not be recorded.
REFUSALS = {
    "same_reviewer": "You already approved this request; it needs a different second reviewer.",
    "already_decided": "Someone else decided this request first.",
    "expired": "This request expired before it was decided; the run stopped (approval_timeout).",
}


class HtmxHttpRequest(HttpRequest):
    """A request as django-htmx's middleware leaves it, for the type checker."""

    htmx: HtmxDetails


def _card_context(
    request: HttpRequest, approval: ApprovalRequest, form: DecisionForm | None = None
) -> dict[str, Any]:
    _mark_mine(request, [approval])
    return {
        "approval": approval,
        "form": form or DecisionForm(),
        "can_decide": roles.has_role(request.user, roles.REVIEWER),
    }


def _mark_mine(request: HttpRequest, approvals: Iterable[ApprovalRequest]) -> None:
    """Flag the requests this reviewer already approved (they wait for a different reviewer)."""
    for approval in approvals:
        approval.decided_by_me = any(
            decision.reviewer_id == request.user.pk for decision in approval.decisions.all()
        )


@role_required(roles.ONCALL)
@require_GET
def queue(request: HtmxHttpRequest) -> HttpResponse:
    newer_than_param = request.GET.get("newer_than")
    newer_than = int(newer_than_param) if newer_than_param and newer_than_param.isdigit() else None
    approvals = selectors.approval_queue(newer_than=newer_than, limit=QUEUE_SIZE)
    _mark_mine(request, approvals)
    context = {
        "approvals": approvals,
        "can_decide": roles.has_role(request.user, roles.REVIEWER),
        "decision_form": DecisionForm(),
    }
    if request.htmx and newer_than is not None:
        return render(request, "approvals/queue.html#cards", context)
    context["pending_count"] = selectors.approval_pending_count()
    return render(request, "approvals/queue.html", context)


@role_required(roles.ONCALL)
@require_GET
def badge(request: HttpRequest) -> HttpResponse:
    """The pending count in the navigation, refreshed live."""
    return render(
        request, "partials/pending_badge.html", {"count": selectors.approval_pending_count()}
    )


@role_required(roles.ONCALL)
@require_GET
def card(request: HtmxHttpRequest, request_id: int) -> HttpResponse:
    """One card (htmx refreshes a card when a first reviewer has approved it elsewhere)."""
    approval = selectors.approval_card(request_id=request_id)
    if approval is None:
        raise Http404(f"No approval request {request_id}.")
    context = _card_context(request, approval)
    if not request.htmx:
        return render(request, "approvals/card_page.html", context)
    part = "progress" if request.GET.get("fragment") == "progress" else "card"
    return render(request, f"approvals/card.html#{part}", context)


@role_required(roles.REVIEWER)
@require_POST
def decide(request: HtmxHttpRequest, request_id: int) -> HttpResponse:
    """Approve or reject. htmx swaps the card in place; a plain POST redirects to the queue.

    Refusals (same reviewer twice, decided elsewhere, expired, no comment to reject) come back
    as form errors on the card and change nothing.
    """
    form = DecisionForm(request.POST)
    status = 422
    if form.is_valid():
        try:
            services.approval_decide(
                request_id=request_id,
                reviewer=request.user,
                verdict=form.cleaned_data["verdict"],
                comment=form.cleaned_data["comment"],
            )
        except NotFound as error:
            raise not_found(error) from None
        except ServiceError as error:
            form.add_error(
                "comment" if error.code == "comment_required" else None,
                REFUSALS.get(error.code, str(error.detail)),
            )
            status = error.status
        else:
            return _decided(request, request_id)
    approval = selectors.approval_card(request_id=request_id)
    if approval is None:
        raise Http404(f"No approval request {request_id}.")
    context = _card_context(request, approval, form)
    if request.htmx:
        return render(request, "approvals/card.html#card", context, status=status)
    context["standalone"] = True
    return render(request, "approvals/card_page.html", context, status=status)


def _decided(request: HtmxHttpRequest, request_id: int) -> HttpResponse:
    approval = selectors.approval_card(request_id=request_id)
    assert approval is not None  # it was decided a moment ago in this request
    if approval.status == ApprovalStatus.PENDING:
        note = (
            f"Approved by you; {approval.reviewers_required} distinct reviewers are needed, "
            "so it waits for another reviewer."
        )
    else:
        note = f"Request {request_id} {approval.status}; the waiting agent has its answer."
    if not request.htmx:
        messages.success(request, note)
        return redirect("approvals:queue")
    context = _card_context(request, approval)
    context["note"] = note
    return render(request, "approvals/card.html#card", context)


@role_required(roles.ONCALL)
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    form = HistoryFilterForm(request.GET)
    status = form.cleaned_data["status"] if form.is_valid() else None
    before = KeysetCursor.decode(request.GET.get("before", ""))
    approvals, next_cursor = selectors.approval_history(
        status=status or None, before=before, limit=HISTORY_PAGE_SIZE
    )
    query = request.GET.copy()
    query.pop("before", None)
    return render(
        request,
        "approvals/history.html",
        {
            "form": form,
            "approvals": approvals,
            "filter_query": query.urlencode(),
            "next_cursor": next_cursor.encode() if next_cursor else "",
            "paged": before is not None,
        },
    )
