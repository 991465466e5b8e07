"""Policy pages (current, edit, tools, budgets, versions, export) and the kill switch page.
Thin: check the role, validate, call one service."""

from __future__ import annotations

import difflib

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents.models import KillSwitch, KillSwitchMode
from agents.monitoring.replay import policy_dry_run
from agents.policy import selectors, services
from agents.policy.document import dump_yaml
from agents.policy.forms import (
    BudgetsForm,
    KillSwitchForm,
    PolicyRestoreForm,
    PolicyYamlForm,
    ToolForm,
)
from agents.policy.selectors import kill_switch_current
from agents.policy.services import kill_switch_set
from opsconsole import roles
from opsconsole.audit import actor_name
from opsconsole.decorators import role_required
from opsconsole.errors import NotFound, ServiceError
from opsconsole.pages import int_or_none, not_found, or_404


def _based_on(request: HttpRequest) -> int | None:
    """The policy version the editor's form was loaded from (its hidden ``based_on`` field)."""
    try:
        return int(request.POST.get("based_on", ""))
    except ValueError:
        return None


def _publish(request: HttpRequest, form, document: dict) -> bool:
    """Publish through the service; its refusals become form errors. True if it saved.

    The page is rendered again with the current version as ``based_on``, so saving once more
    after a conflict is a deliberate choice made with the other change in view."""
    try:
        version = services.policy_publish(
            document=document,
            author=actor_name(request.user),
            reason=form.cleaned_data["reason"],
            based_on=_based_on(request),
        )
    except ServiceError as error:
        details = error.detail if isinstance(error.detail, list) else [error.detail]
        for detail in details:
            form.add_error(None, str(detail))
        return False
    messages.success(request, f"Policy v{version.number} published; it governs the next call.")
    return True


@role_required(roles.ONCALL)
@require_GET
def policy_current(request: HttpRequest) -> HttpResponse:
    policy = selectors.policy_current()
    document = policy.document
    tools = sorted(set(document["tools"]["allow"]) | set(document["tools"]["definitions"]))
    breakers = selectors.tool_breakers()
    rules = [
        (name, name in document["tools"]["allow"], policy.tool_rule(name), breakers.get(name))
        for name in tools
    ]
    if request.htmx:  # the tools table, refreshed live when a breaker changes
        return render(request, "policy/current.html#tools", {"policy": policy, "rules": rules})
    return render(
        request,
        "policy/current.html",
        {
            "policy": policy,
            "rules": rules,
            "document": document,
            "versions": selectors.policy_version_list(limit=10),
        },
    )


@role_required(roles.ADMIN)
@require_http_methods(["GET", "POST"])
def policy_edit(request: HttpRequest) -> HttpResponse:
    """The whole policy as YAML (pasted or uploaded): this is also the import."""
    policy = selectors.policy_current()
    dry_run = None
    if request.method == "POST":
        form = PolicyYamlForm(request.POST, request.FILES)
        preview = "preview" in request.POST
        if preview:
            form.fields["reason"].required = False  # nothing is saved by a dry run
        if form.is_valid():
            if preview:
                # "This change would have stopped N of the last 1,000 runs": replayed, no tool called.
                dry_run = policy_dry_run(form.cleaned_data["document"])
            elif _publish(request, form, form.cleaned_data["document"]):
                return redirect("policy:current")
        status = 200 if dry_run is not None else 422
    else:
        form = PolicyYamlForm(initial={"yaml": dump_yaml(policy.document)})
        status = 200
    return render(
        request,
        "policy/edit.html",
        {"form": form, "policy": policy, "dry_run": dry_run},
        status=status,
    )


@role_required(roles.ADMIN)
@require_http_methods(["GET", "POST"])
def policy_tool(request: HttpRequest, name: str = "") -> HttpResponse:
    policy = selectors.policy_current()
    if request.method == "POST":
        form = ToolForm(request.POST, current=policy.document)
        if form.is_valid() and _publish(request, form, form.cleaned_data["document"]):
            return redirect("policy:current")
        status = 422
    else:
        initial = ToolForm.initial_for(policy.document, name) if name else {"allowed": True}
        form = ToolForm(initial=initial, current=policy.document)
        status = 200
    return render(
        request, "policy/tool.html", {"form": form, "name": name, "policy": policy}, status=status
    )


@role_required(roles.ADMIN)
@require_http_methods(["GET", "POST"])
def policy_budgets(request: HttpRequest, agent: str = "") -> HttpResponse:
    policy = selectors.policy_current()
    if request.method == "POST":
        data = request.POST.copy()
        data["agent"] = agent  # the URL names the agent, not a hidden field
        form = BudgetsForm(data, current=policy.document)
        if form.is_valid() and _publish(request, form, form.cleaned_data["document"]):
            return redirect("policy:current")
        status = 422
    else:
        form = BudgetsForm(
            initial=BudgetsForm.initial_for(policy.document, agent), current=policy.document
        )
        status = 200
    return render(
        request,
        "policy/budgets.html",
        {"form": form, "agent": agent, "policy": policy},
        status=status,
    )


@role_required(roles.ONCALL)
@require_GET
def policy_versions(request: HttpRequest) -> HttpResponse:
    before = int_or_none(request.GET.get("before"))
    versions = selectors.policy_version_list(before=before, limit=51)
    more = len(versions) > 50
    versions = versions[:50]
    return render(
        request,
        "policy/versions.html",
        {
            "versions": versions,
            "next_before": versions[-1].number if more else None,
            "paged": before is not None,
        },
    )


def unified_diff(old: dict | None, new: dict, old_name: str, new_name: str) -> list[str]:
    return list(
        difflib.unified_diff(
            dump_yaml(old).splitlines() if old is not None else [],
            dump_yaml(new).splitlines(),
            fromfile=old_name,
            tofile=new_name,
            lineterm="",
        )
    )


def _version_page(
    request: HttpRequest, number: int, restore_form=None, status: int = 200
) -> HttpResponse:
    version, previous = or_404(selectors.policy_version_with_previous, number=number)
    diff = unified_diff(
        previous.document if previous else None,
        version.document,
        f"v{previous.number}" if previous else "(nothing)",
        f"v{version.number}",
    )
    current = selectors.policy_current()
    return render(
        request,
        "policy/version.html",
        {
            "version": version,
            "previous": previous,
            "diff": diff,
            "is_current": current.version == version.number,
            "restore_form": restore_form
            or PolicyRestoreForm(initial={"reason": f"restore v{number}"}),
            "yaml": dump_yaml(version.document),
        },
        status=status,
    )


@role_required(roles.ONCALL)
@require_GET
def policy_version(request: HttpRequest, number: int) -> HttpResponse:
    return _version_page(request, number)


@role_required(roles.ADMIN)
@require_POST
def policy_restore(request: HttpRequest, number: int) -> HttpResponse:
    """Restoring publishes the old document as a new version (with ``restored_from``)."""
    form = PolicyRestoreForm(request.POST)
    if not form.is_valid():
        return _version_page(request, number, restore_form=form, status=422)
    try:
        version = services.policy_restore(
            number=number, author=actor_name(request.user), reason=form.cleaned_data["reason"]
        )
    except NotFound as error:
        raise not_found(error) from None
    messages.success(request, f"v{number} restored as v{version.number}.")
    return redirect("policy:version", number=version.number)


@role_required(roles.ONCALL)
@require_GET
def policy_export(request: HttpRequest) -> HttpResponse:
    """The policy as YAML, the live one or ``?version=N``; importing it gives the same policy."""
    number = int_or_none(request.GET.get("version"))
    if number is None:
        policy = selectors.policy_current()
        number, document = policy.version, policy.document
    else:
        version, _ = or_404(selectors.policy_version_with_previous, number=number)
        document = version.document
    response = HttpResponse(dump_yaml(document), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="policy-v{number}.yaml"'
    return response


@role_required(roles.ONCALL)
@require_http_methods(["GET", "POST"])
def kill_switch(request: HttpRequest) -> HttpResponse:
    """Everyone with a role sees who set the switch and why; only admins change it.

    A change is two POSTs: the first validates and shows what will happen (runs that stop, tools
    that go dark); the second, carrying ``confirmed``, calls the service.
    """
    switch = kill_switch_current()
    if request.method == "GET":
        form = KillSwitchForm(initial={"mode": switch.mode})
        if request.htmx:
            return render(request, "kill_switch.html#state", {"switch": switch})
        return _kill_switch_page(request, switch, form)

    if not roles.has_role(request.user, roles.ADMIN):
        return render(request, "403.html", {"required_role": roles.ADMIN}, status=403)
    form = KillSwitchForm(request.POST)
    if not form.is_valid():
        return _kill_switch_page(request, switch, form, status=422)
    mode = form.cleaned_data["mode"]
    confirmed = form.cleaned_data["confirmed"]
    stale = confirmed and form.cleaned_data["from_mode"] != switch.mode
    if not confirmed or stale:
        impact = selectors.kill_switch_impact(mode=mode)
        confirm_form = KillSwitchForm(
            initial={**form.cleaned_data, "confirmed": True, "from_mode": switch.mode}
        )
        return render(
            request,
            "kill_switch_confirm.html",
            {
                "switch": switch,
                "form": confirm_form,
                "mode": mode,
                "mode_label": KillSwitchMode(mode).label,
                "reason": form.cleaned_data["reason"],
                "impact": impact,
                "stale": stale,
            },
        )
    try:
        kill_switch_set(
            mode=mode, reason=form.cleaned_data["reason"], actor=actor_name(request.user)
        )
    except ServiceError as error:
        form.add_error(None, str(error.detail))
        return _kill_switch_page(request, switch, form, status=422)
    messages.success(request, f"Kill switch set to {mode}.")
    return redirect("kill_switch")


def _kill_switch_page(
    request: HttpRequest, switch: KillSwitch, form: KillSwitchForm, status: int = 200
) -> HttpResponse:
    """The page, with the tools of the policy in force that each mode turns off."""
    policy = selectors.policy_current()
    mode_tools = {mode: policy.tools_stopped_by(mode) for mode in KillSwitchMode.values}
    return render(
        request,
        "kill_switch.html",
        {"switch": switch, "form": form, "policy": policy, "mode_tools": mode_tools},
        status=status,
    )
