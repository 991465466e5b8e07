"""Cross-cutting pages: overview, kill switch, audit log, and the health check."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import messages
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_GET, require_http_methods

from opsconsole import health, roles, selectors, services
from opsconsole.audit import actor_name
from opsconsole.context_processors import console_state
from opsconsole.decorators import role_required
from opsconsole.errors import ServiceError
from opsconsole.forms import AuditFilterForm, WebhookEndpointForm

AUDIT_PAGE_SIZE = 50


@role_required(roles.ONCALL)
@require_GET
def audit(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    filters: dict = {}
    if form.is_valid():
        filters = {key: value for key, value in form.cleaned_data.items() if value}
    entries, next_before = selectors.audit_page(**filters, limit=AUDIT_PAGE_SIZE)
    if not roles.has_role(request.user, roles.ADMIN):
        # Webhook URLs are credentials (a Slack-style receiver needs nothing else). Shown, never
        # saved: audit rows refuse UPDATE, and the entries are not written back.
        for entry in entries:
            entry.reason = _without_url_secrets(entry.reason)
            entry.before = _without_url_secrets(entry.before)
            entry.after = _without_url_secrets(entry.after)
    next_query = request.GET.copy()
    if next_before:
        next_query["before"] = next_before
    context = {
        "form": form,
        "entries": entries,
        "next_query": next_query.urlencode() if next_before else "",
        "paged": "before" in filters,
        "first_query": _without(request.GET, "before"),
    }
    return render(request, "audit.html", context)


# scheme://[user[:password]@]host[:port] and whatever follows, up to a space or a quote.
_URL = re.compile(
    r"\b(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<user>[^\s/?#\"'<>]*@)?"
    r"(?P<host>[^\s/?#@\"'<>]*)(?P<rest>[^\s\"'<>]*)",
    re.IGNORECASE,
)


def _url_cut(url: re.Match[str]) -> str:
    if not url["user"] and url["rest"] in ("", "/"):
        return url[0]  # nothing to hide
    return f"{url['scheme']}://{url['host']}/…"


def _without_url_secrets(value: Any) -> Any:
    """``value`` with every URL in it cut to ``scheme://host/…``: no user, password, path or
    query (where a webhook URL keeps its token), at any depth of a JSON value."""
    if isinstance(value, str):
        return _URL.sub(_url_cut, value)
    if isinstance(value, dict):
        return {key: _without_url_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_url_secrets(item) for item in value]
    return value


def _without(query, key: str) -> str:
    query = query.copy()
    query.pop(key, None)
    return query.urlencode()


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@role_required(roles.ADMIN)
@require_http_methods(["GET", "POST"])
def webhooks(request: HttpRequest) -> HttpResponse:
    """Admins add endpoints, switch them off and on, and see (and retry) failed deliveries."""
    form = WebhookEndpointForm()
    status = 200
    if request.method == "POST":
        actor = actor_name(request.user)
        action = request.POST.get("action", "create")
        try:
            if action == "create":
                form = WebhookEndpointForm(request.POST)
                if form.is_valid():
                    services.webhook_endpoint_create(actor=actor, **form.cleaned_data)
                    messages.success(request, f"Endpoint {form.cleaned_data['name']} added.")
                    return redirect("webhooks")
                status = 422
            elif action in {"enable", "disable"}:
                services.webhook_endpoint_set_enabled(
                    endpoint_id=_int(request.POST.get("endpoint")),
                    enabled=action == "enable",
                    actor=actor,
                )
                return redirect("webhooks")
            elif action == "retry":
                if not services.webhook_delivery_retry(
                    delivery_id=_int(request.POST.get("delivery")), actor=actor
                ):
                    messages.error(request, "Only a failed delivery can be retried.")
                return redirect("webhooks")
            else:
                messages.error(request, f"Unknown action {action!r}.")
                status = 400
        except ServiceError as error:
            form.add_error(None, str(error.detail))
            status = error.status
    context = {"form": form, **selectors.webhook_overview()}
    return render(request, "webhooks.html", context, status=status)


def _int(value: str | None) -> int:
    try:
        return int(value or "")
    except ValueError:
        return 0


@role_required(roles.ONCALL)
@require_GET
def console_status(request: HttpRequest) -> JsonResponse:
    """Background work and live updates, for the console's health notice (static/js/live.js).

    Fetched by the page, so rendering a page pays nothing for it. Answers 200 whatever is down
    (the probe of the channel layer is bounded and reports failure instead of raising).
    """

    response = JsonResponse(health.console_status())
    add_never_cache_headers(response)
    return response


@role_required(roles.ONCALL)
@require_GET
def console_banners(request: HttpRequest) -> HttpResponse:
    """The degraded-tools and paused-agents banners as every page shows them (templates/base.html),
    for static/js/live.js to swap in on ``tools.degraded_changed``, ``agents.paused_changed`` and
    after a reconnect. Read through ``ConsoleState``, so this layer imports no app."""
    state = console_state(request)
    html = render_to_string(
        "partials/degraded_tools.html", {"tools": state.degraded_tools}, request=request
    ) + render_to_string(
        "partials/paused_agents.html", {"agents": state.paused_agents}, request=request
    )
    response = HttpResponse(html)
    add_never_cache_headers(response)
    return response
