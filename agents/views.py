"""Console pages for runs, agents and policy. Thin: check the role, validate, call one service."""

from __future__ import annotations

import difflib

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents import selectors, services, stop_reasons
from agents.forms import (
    AgentCreateForm,
    AgentEnableForm,
    BudgetsForm,
    CancelRunForm,
    KeyIssueForm,
    PolicyRestoreForm,
    PolicyYamlForm,
    RunFilterForm,
    ToolForm,
)
from agents.models import AgentKey
from agents.policy import dump_yaml
from agents.replay import policy_dry_run
from opsconsole import roles
from opsconsole.audit import actor_name
from opsconsole.decorators import role_required
from opsconsole.errors import NotFound, ServiceError

RUN_PAGE_SIZE = 50
TRACE_PAGE_SIZE = 100


def _not_found(error: NotFound) -> Http404:
    return Http404(str(error.detail))


# --- runs -------------------------------------------------------------------------------------


@role_required(roles.ONCALL)
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    form = RunFilterForm(request.GET)
    form.is_valid()  # invalid filters are shown as errors and left out
    cursor = selectors.RunCursor.decode(request.GET.get("after", ""))
    runs, next_cursor = selectors.run_page(
        **form.selector_filters(), after=cursor, limit=RUN_PAGE_SIZE
    )
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
    try:
        run = selectors.run_get(run_id=run_id)
    except NotFound as error:
        raise _not_found(error) from None
    after = _int_or_none(request.GET.get("after"))
    before = _int_or_none(request.GET.get("before"))
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
            services.run_cancel(
                run_id=run_id,
                actor=actor_name(request.user),
                reason=form.cleaned_data["reason"].strip(),
            )
            messages.success(request, f"Run {run_id} stopped (cancelled).")
        except NotFound as error:
            raise _not_found(error) from None
        except ServiceError as error:
            messages.error(request, str(error.detail))
            status = error.status
    if not request.htmx:
        return redirect("runs:detail", run_id=run_id)
    try:
        run = selectors.run_get(run_id=run_id)
    except NotFound as error:
        raise _not_found(error) from None
    context = {
        "run": run,
        "explanation": stop_reasons.explain(run.stop_reason) if run.stop_reason else None,
        "cancel_form": form,
    }
    return render(request, "runs/detail.html#header", context, status=status)


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None


# --- agents (admins) --------------------------------------------------------------------------


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
                form.add_error(_field_for(error), _message(error))
            else:
                messages.success(request, f"Agent {agent.name} created. Issue it a key below.")
                return redirect("agents:detail", name=agent.name)
        status = 422
    elif request.htmx:  # the table, refreshed live when an agent or its keys change
        return render(request, "agents/list.html#table", {"agents": selectors.agent_admin_list()})
    return render(
        request,
        "agents/list.html",
        {"agents": selectors.agent_admin_list(), "form": form},
        status=status,
    )


def _agent_page(request: HttpRequest, name: str, **extra) -> HttpResponse:
    try:
        agent = selectors.agent_get(name=name)
    except NotFound as error:
        raise _not_found(error) from None
    status = extra.pop("status", 200)
    policy = selectors.policy_current()
    context = {
        "agent": agent,
        "keys": agent.keys.order_by("-created_at", "-id"),
        "key_form": KeyIssueForm(),
        "enable_form": AgentEnableForm(initial={"enabled": "0" if agent.enabled else "1"}),
        "policy_rule": policy.document["agents"].get(agent.name),
        "allowed_tools": policy.allowed_tools(agent.name),
        **extra,
    }
    response = render(request, "agents/detail.html", context, status=status)
    if "raw_key" in extra:
        # The key is shown once: never cache the page that holds it.
        response["Cache-Control"] = "no-store"
    return response


@role_required(roles.ADMIN)
@require_GET
def agent_detail(request: HttpRequest, name: str) -> HttpResponse:
    return _agent_page(request, name)


@role_required(roles.ADMIN)
@require_POST
def agent_key_issue(request: HttpRequest, name: str) -> HttpResponse:
    """Answers with the page itself (no redirect), the only time the raw key is ever shown."""
    try:
        agent = selectors.agent_get(name=name)
    except NotFound as error:
        raise _not_found(error) from None
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
    try:
        agent = selectors.agent_get(name=name)
    except NotFound as error:
        raise _not_found(error) from None
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


# --- policy -----------------------------------------------------------------------------------


def _field_for(error: ServiceError) -> str | None:
    return "name" if error.code == "agent_exists" else None


def _message(error: ServiceError) -> str:
    if isinstance(error.detail, list):
        return "; ".join(str(item) for item in error.detail)
    return str(error.detail)


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
    before = _int_or_none(request.GET.get("before"))
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
    try:
        version, previous = selectors.policy_version_with_previous(number=number)
    except NotFound as error:
        raise _not_found(error) from None
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
        raise _not_found(error) from None
    messages.success(request, f"v{number} restored as v{version.number}.")
    return redirect("policy:version", number=version.number)


@role_required(roles.ONCALL)
@require_GET
def policy_export(request: HttpRequest) -> HttpResponse:
    """The policy as YAML, the live one or ``?version=N``; importing it gives the same policy."""
    number = _int_or_none(request.GET.get("version"))
    if number is None:
        policy = selectors.policy_current()
        number, document = policy.version, policy.document
    else:
        try:
            version, _ = selectors.policy_version_with_previous(number=number)
        except NotFound as error:
            raise _not_found(error) from None
        document = version.document
    response = HttpResponse(dump_yaml(document), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="policy-v{number}.yaml"'
    return response
