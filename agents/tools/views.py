"""The tool page and its containment control. Thin: check the role, validate, call one service."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents.tools import selectors, services
from agents.tools.forms import DegradeForm, LiftForm
from opsconsole import roles
from opsconsole.audit import actor_name
from opsconsole.decorators import role_required
from opsconsole.errors import ServiceError


def _page(request: HttpRequest, tool: str, form: DegradeForm, status: int = 200) -> HttpResponse:
    page = selectors.tool_page(tool=tool)
    return render(
        request,
        "tools/detail.html",
        {"page": page, "stats": page.stats, "form": form},
        status=status,
    )


@role_required(roles.ONCALL)
@require_GET
def tool_detail(request: HttpRequest, tool: str) -> HttpResponse:
    """The tool page; htmx re-fetches its live stats apart (``?fragment=stats``: rate, spend,
    breaker, stop mix, recent calls) on run.updated and breaker.updated, at most once a second, and
    every 30 s. The degrade and lift forms are outside that part."""
    if request.htmx and request.GET.get("fragment") == "stats":
        page = selectors.tool_page(tool=tool)
        return render(request, "tools/detail.html#stats", {"page": page, "stats": page.stats})
    return _page(request, tool, DegradeForm())


@role_required(roles.ONCALL)
@require_POST
def tool_degrade(request: HttpRequest, tool: str) -> HttpResponse:
    form = DegradeForm(request.POST)
    if not form.is_valid():
        return _page(request, tool, form, status=422)
    try:
        breaker = services.tool_degrade(
            tool=tool,
            minutes=form.cleaned_data["minutes"],
            reason=form.cleaned_data["reason"],
            actor=actor_name(request.user),
        )
    except ServiceError as error:
        form.add_error(None, str(error.detail))
        return _page(request, tool, form, status=422)
    messages.success(
        request, f"{tool} is degraded until {breaker.forced_until:%H:%M:%S} UTC for every agent."
    )
    return redirect("tools:detail", tool=tool)


@role_required(roles.ONCALL)
@require_POST
def tool_lift(request: HttpRequest, tool: str) -> HttpResponse:
    form = LiftForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    services.tool_restore(tool=tool, actor=actor_name(request.user), reason=reason)
    messages.success(request, f"{tool} is no longer degraded by hand.")
    return redirect("tools:detail", tool=tool)
