"""Console pages for runs, agents and policy. Thin: check the role, validate, call one service."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_POST

from agents import stop_reasons
from agents.gateway import services as gateway_services
from agents.monitoring import charts
from agents.policy.selectors import kill_switch_current
from agents.runs import selectors
from agents.runs.forms import CancelRunForm, RunFilterForm
from opsconsole import roles
from opsconsole.audit import actor_name
from opsconsole.decorators import role_required
from opsconsole.errors import NotFound, ServiceError
from opsconsole.pages import int_or_none, not_found, or_404
from opsconsole.pagination import AmountCursor, KeysetCursor

RUN_PAGE_SIZE = 50
TRACE_PAGE_SIZE = 100


# --- runs -------------------------------------------------------------------------------------


@role_required(roles.ONCALL)
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    form = RunFilterForm(request.GET)
    form.is_valid()  # invalid filters are shown as errors and left out
    filters = form.selector_filters()
    cursor_type = AmountCursor if filters["sort"] == "cost" else KeysetCursor
    cursor = cursor_type.decode(request.GET.get("after", ""))
    runs, next_cursor = selectors.run_page(**filters, after=cursor, limit=RUN_PAGE_SIZE)
    query = request.GET.copy()
    query.pop("after", None)
    context = {
        "form": form,
        "runs": runs,
        "first_page": cursor is None,
        "filter_query": query.urlencode(),
        "next_cursor": next_cursor.encode() if next_cursor else "",
        "stop_reason_kinds": stop_reasons.ALL_KINDS,
    }
    if request.htmx and request.GET.get("fragment") == "rows":
        return render(request, "runs/list.html#table", context)
    context["agent_names"] = selectors.run_agent_names()
    return render(request, "runs/list.html", context)


@role_required(roles.ONCALL)
@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = or_404(selectors.run_get, run_id=run_id)
    after = int_or_none(request.GET.get("after"))
    before = int_or_none(request.GET.get("before"))
    latest = request.GET.get("latest") == "1"
    if latest and before is None:
        before = 2**63 - 1
    events, more = selectors.run_trace_page(
        run=run, after=after, before=before, limit=TRACE_PAGE_SIZE
    )
    context = {
        "run": run,
        "events": events,
        "more_after": more if before is None else False,
        "more_before": more if before is not None else (after is not None),
        "last_event_id": events[-1].pk if events else (after or 0),
        "first_event_id": events[0].pk if events else None,
        "paging_back": before is not None,
        "explanation": stop_reasons.explain(run.stop_reason) if run.stop_reason else None,
        "cancel_form": CancelRunForm(),
    }
    fragment = request.GET.get("fragment") if request.htmx else None
    if fragment == "events":
        return render(request, "runs/detail.html#events", context)
    # The summary lives in the header, which live.js re-fetches on every run.updated.
    context["summary"] = selectors.run_summary(run)
    if fragment == "header":
        return render(request, "runs/detail.html#header", context)
    return render(request, "runs/detail.html", context)


@role_required(roles.ONCALL)
@require_POST
def run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    """On-call and up stop one run; the agent sees ``cancelled`` at its next gateway call."""
    form = CancelRunForm(request.POST)
    status = 200
    if form.is_valid():
        try:
            gateway_services.run_cancel(
                run_id=run_id,
                actor=actor_name(request.user),
                reason=form.cleaned_data["reason"].strip(),
            )
            messages.success(request, f"Run {run_id} stopped (cancelled).")
        except NotFound as error:
            raise not_found(error) from None
        except ServiceError as error:
            messages.error(request, str(error.detail))
            status = error.status
    if not request.htmx:
        return redirect("runs:detail", run_id=run_id)
    run = or_404(selectors.run_get, run_id=run_id)
    context = {
        "run": run,
        "explanation": stop_reasons.explain(run.stop_reason) if run.stop_reason else None,
        "cancel_form": form,
        "summary": selectors.run_summary(run),
    }
    return render(request, "runs/detail.html#header", context, status=status)


@role_required(roles.ONCALL)
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """The landing page; htmx refreshes its two live parts apart: the load ranking
    (``?fragment=ranking``, on every run.updated, at most once a second) and the stats."""
    fragment = request.GET.get("fragment") if request.htmx else None
    context: dict[str, Any] = {}
    if fragment == "ranking" or not request.htmx:
        ranking = selectors.load_ranking(now=timezone.now())
        minutes = selectors.LOAD_TREND_MINUTES

        def with_trend(row: selectors.LoadRow) -> tuple[selectors.LoadRow, SafeString]:
            title = f"{row.name}: calls a minute over the last {minutes} minutes: {row.trend}"
            return row, charts.sparkline(row.trend, title=title)

        context |= {
            "ranking": ranking,
            "ranked_agents": [with_trend(row) for row in ranking.agents],
            "ranked_tools": [with_trend(row) for row in ranking.tools],
            "trend_minutes": minutes,
        }
        if fragment == "ranking":
            return render(request, "overview.html#ranking", context)
    context |= {"overview": selectors.overview(), "kill_switch": kill_switch_current()}
    if request.htmx:
        return render(request, "overview.html#stats", context)
    return render(request, "overview.html", context)
