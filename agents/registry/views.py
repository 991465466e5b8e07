"""Agents pages: the list, keys, enable and disable (admins); one agent's page, pause and resume
(on-call and up). Thin: check the role, validate, call one service."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents.models import AgentKey
from agents.policy import selectors as policy_selectors
from agents.registry import migration_path, selectors, services
from agents.registry.forms import (
    AgentCreateForm,
    AgentEnableForm,
    AgentModeForm,
    AgentPauseForm,
    KeyIssueForm,
)
from opsconsole import roles
from opsconsole.audit import actor_name
from opsconsole.decorators import role_required
from opsconsole.errors import ServiceError
from opsconsole.pages import error_message, or_404


@role_required(roles.ADMIN)
@require_http_methods(["GET", "POST"])
def agent_list(request: HttpRequest) -> HttpResponse:
    form = AgentCreateForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                agent = services.agent_create(
                    name=form.cleaned_data["name"],
                    description=form.cleaned_data["description"],
                    tools=form.cleaned_data["tools"] or None,
                    actor=actor_name(request.user),
                )
            except ServiceError as error:
                form.add_error(
                    "name" if error.code == "agent_exists" else None, error_message(error)
                )
            else:
                messages.success(request, f"Agent {agent.name} created. Issue it a key below.")
                return redirect("agents:detail", name=agent.name)
        status = 422
    elif request.htmx:  # the table, refreshed live when an agent or its keys change
        rows = selectors.agent_admin_list_with_spend()
        return render(request, "agents/list.html#table", {"rows": rows})
    return render(
        request,
        "agents/list.html",
        {"rows": selectors.agent_admin_list_with_spend(), "form": form},
        status=status,
    )


def _agent_page(request: HttpRequest, name: str, **extra) -> HttpResponse:
    agent = or_404(selectors.agent_get, name=name)
    status = extra.pop("status", 200)
    policy = policy_selectors.policy_current()
    context = {
        "agent": agent,
        "key_form": KeyIssueForm(),
        "enable_form": AgentEnableForm(initial={"enabled": "0" if agent.enabled else "1"}),
        "pause_form": AgentPauseForm(),
        "mode_form": AgentModeForm(
            initial={"mode": "enforce" if agent.mode == "observe" else "observe"}
        ),
        "policy_rule": policy.document["agents"].get(agent.name),
        "allowed_tools": policy.allowed_tools(agent.name),
        "spend": selectors.agent_spend(agent_ids=[agent.pk]).get(agent.pk, selectors.Spend()),
        "activity": selectors.agent_activity(agent=agent),
        # Lazy: only an admin's page (console.can_admin) reads the keys.
        "keys": agent.keys.order_by("-created_at", "-id"),
        **extra,
    }
    response = render(request, "agents/detail.html", context, status=status)
    if "raw_key" in extra:
        # The key is shown once: never cache the page that holds it.
        response["Cache-Control"] = "no-store"
    return response


@role_required(roles.ONCALL)
@require_GET
def agent_detail(request: HttpRequest, name: str) -> HttpResponse:
    """The agent's page; htmx re-fetches its live stats apart (``?fragment=stats``: rate, spend,
    stop mix, recent runs and calls) on every run.updated, at most once a second, and every 30 s."""
    if request.htmx and request.GET.get("fragment") == "stats":
        agent = or_404(selectors.agent_get, name=name)
        context = {
            "agent": agent,
            "spend": selectors.agent_spend(agent_ids=[agent.pk]).get(agent.pk, selectors.Spend()),
            "activity": selectors.agent_activity(agent=agent),
        }
        return render(request, "agents/detail.html#stats", context)
    return _agent_page(request, name)


@role_required(roles.ADMIN)
@require_POST
def agent_key_issue(request: HttpRequest, name: str) -> HttpResponse:
    """Answers with the page itself (no redirect), the only time the raw key is ever shown."""
    agent = or_404(selectors.agent_get, name=name)
    form = KeyIssueForm(request.POST)
    if not form.is_valid():
        return _agent_page(request, name, key_form=form, status=422)
    key, raw = services.agent_key_issue(
        agent=agent, actor=actor_name(request.user), label=form.cleaned_data["label"]
    )
    return _agent_page(request, name, raw_key=raw, new_key=key)


@role_required(roles.ADMIN)
@require_POST
def agent_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = AgentKey.objects.select_related("agent").filter(pk=key_id).first()
    if key is None:
        raise Http404(f"No key {key_id}.")
    services.agent_key_revoke(key_id=key_id, actor=actor_name(request.user))
    messages.success(request, f"Key {key.prefix}… revoked; it stops working at once.")
    return redirect("agents:detail", name=key.agent.name)


@role_required(roles.ADMIN)
@require_POST
def agent_set_enabled(request: HttpRequest, name: str) -> HttpResponse:
    agent = or_404(selectors.agent_get, name=name)
    form = AgentEnableForm(request.POST)
    if not form.is_valid():
        return _agent_page(request, name, enable_form=form, status=422)
    enabled = form.cleaned_data["enabled"]
    services.agent_set_enabled(
        agent=agent,
        enabled=enabled,
        reason=form.cleaned_data["reason"].strip(),
        actor=actor_name(request.user),
    )
    messages.success(
        request,
        f"Agent {name} enabled."
        if enabled
        else f"Agent {name} disabled: its runs stop with agent_disabled at their next call.",
    )
    return redirect("agents:detail", name=name)


@role_required(roles.ADMIN)
@require_POST
def agent_set_mode(request: HttpRequest, name: str) -> HttpResponse:
    """Observe or enforce: a new policy version, audited (``agent.mode``)."""
    agent = or_404(selectors.agent_get, name=name)
    form = AgentModeForm(request.POST)
    if not form.is_valid():
        return _agent_page(request, name, mode_form=form, status=422)
    mode = form.cleaned_data["mode"]
    services.agent_mode_set(
        agent=agent, mode=mode, reason=form.cleaned_data["reason"], actor=actor_name(request.user)
    )
    messages.success(
        request,
        f"Agent {name} is in observe mode: its calls are allowed and what enforcing would have "
        "done is recorded on its runs."
        if mode == "observe"
        else f"Agent {name} is in enforce mode: the gateway's decisions apply from its next call.",
    )
    return redirect("agents:detail", name=name)


@role_required(roles.ONCALL)
@require_GET
def agent_migration_path(request: HttpRequest, name: str) -> HttpResponse:
    """The seed's migration path for one agent, each step's state computed from the data."""
    agent = or_404(selectors.agent_get, name=name)
    steps = migration_path.migration_path(agent=agent)
    return render(request, "agents/migration_path.html", {"agent": agent, "path": steps})


@role_required(roles.ONCALL)
@require_POST
def agent_pause(request: HttpRequest, name: str) -> HttpResponse:
    """Containment without an admin: the agent's runs stop at their next call."""
    agent = or_404(selectors.agent_get, name=name)
    form = AgentPauseForm(request.POST)
    if not form.is_valid():
        return _agent_page(request, name, pause_form=form, status=422)
    services.agent_pause(
        agent=agent,
        reason=form.cleaned_data["reason"],
        actor=actor_name(request.user),
        by=request.user.get_username(),
    )
    messages.success(
        request,
        f"Agent {name} paused: its runs stop with agent_disabled at their next call, "
        "and it cannot start new runs until resumed.",
    )
    return redirect("agents:detail", name=name)


@role_required(roles.ONCALL)
@require_POST
def agent_resume(request: HttpRequest, name: str) -> HttpResponse:
    agent = or_404(selectors.agent_get, name=name)
    agent = services.agent_resume(
        agent=agent, actor=actor_name(request.user), by=request.user.get_username()
    )
    if agent.enabled:
        messages.success(request, f"Agent {name} resumed: it may start runs again.")
    else:
        messages.error(request, f"Agent {name} is disabled by an admin, not paused.")
    return redirect("agents:detail", name=name)
