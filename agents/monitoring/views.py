"""Monitoring pages (charts from rollups, drift, golden runs, replays, dry runs), exports and
``/metrics``. Thin: check the role, validate, call one service or selector, respond."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from prometheus_client import CONTENT_TYPE_LATEST

from agents.models import BucketSize, DriftMetric
from agents.monitoring import charts, exports, replay, rollups
from agents.monitoring import drift as drift_rules
from agents.monitoring.forms import (
    LARGEST_SPAN,
    SPANS,
    DashboardForm,
    DriftRuleForm,
    DryRunForm,
    GoldenMarkForm,
)
from agents.monitoring.metrics import exposition
from agents.policy import selectors as policy_selectors
from agents.policy.document import PolicyError, parse_yaml
from agents.runs import selectors as runs_selectors
from agents.runs.forms import RunFilterForm
from opsconsole import roles
from opsconsole.audit import actor_name
from opsconsole.decorators import role_required
from opsconsole.errors import NotFound, ServiceError
from opsconsole.pages import not_found

LABEL_FORMATS = {BucketSize.HOUR: "%d %H:00", BucketSize.DAY: "%m-%d"}
# (title, [(rollup field, line label, css class)]) of the percentile charts.
LATENCY_TITLE = "Tool latency p95 (ms)"
# The latency chart draws every tool together, then the slowest few tools on their own.
LATENCY_TOOLS_SHOWN = 4
LINE_CHARTS = [
    ("Tool calls per run", [("tool_calls_p50", "p50", "p50"), ("tool_calls_p95", "p95", "p95")]),
    ("Tokens per request", [("tokens_p50", "p50", "p50"), ("tokens_p95", "p95", "p95")]),
    ("USD per run (average)", [("usd_avg", "avg", "p50")]),
    (
        "Approval wait (s)",
        [("approval_wait_p50", "p50", "p50"), ("approval_wait_p95", "p95", "p95")],
    ),
    ("Runs ended", [("runs", "runs", "count")]),
]


# --- the dashboard ----------------------------------------------------------------------------


@role_required(roles.ONCALL)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    params = request.GET.copy()
    params.setdefault("size", BucketSize.HOUR)
    form = DashboardForm(params)  # no span chosen: "fit the data"
    form.is_valid()  # invalid choices fall back to the defaults
    query = form.query()
    board = rollups.dashboard(**query)
    label_format = LABEL_FORMATS[board.size]
    context = {
        "form": form,
        "board": board,
        "stop_charts": [
            (
                key,
                charts.stacked_bars(
                    title=f"Stop reasons · {key.label}",
                    buckets=board.buckets,
                    stacks=[rollups.stop_reason_kinds(row) for row in rows],
                    order=board.stop_reason_kinds,
                    label_format=label_format,
                ),
            )
            for key, rows in board.series
        ],
        "line_charts": [
            *(_line_chart(title, lines, board, label_format) for title, lines in LINE_CHARTS[:2]),
            _latency_chart(board, label_format),
            *(_line_chart(title, lines, board, label_format) for title, lines in LINE_CHARTS[2:]),
        ],
        "latest": [
            (key, next((r for r in reversed(rows) if r), None)) for key, rows in board.series
        ],
        # Observe mode: what enforcing would have done to the runs in the span.
        "would_stops": [(key, rollups.would_stop_totals(rows)) for key, rows in board.series],
        "agent_versions": rollups.agent_versions(),
        "alerts": drift_rules.drift_alert_list(limit=5),
        "export_query": _export_query(query["keys"][0].agent),
        "older_query": _older_query(params, board),
    }
    return render(request, "monitoring/dashboard.html", context)


def _older_query(params, board) -> str:
    """The query string of the smallest span that shows the older data, when none is drawn."""
    if board.older_start is None:
        return ""
    needed = (board.buckets[-1] - board.older_start) // rollups.SIZES[board.size] + 1
    span = next((span for span, _ in SPANS if span >= needed), LARGEST_SPAN)
    query = params.copy()
    query["buckets"] = str(span)
    return query.urlencode()


def _line_chart(title: str, lines: list[tuple[str, str, str]], board, label_format: str):
    series = [
        charts.Series(
            name=f"{key.label} {label}",
            values=[_float(getattr(row, field)) if row else None for row in rows],
            css=f"s{index} {css}",
        )
        for index, (key, rows) in enumerate(board.series)
        for field, label, css in lines
    ]
    return _chart_context(title, series, board, label_format)


def _latency_chart(board, label_format: str):
    """p95 of every tool's reported latency per series, and of each of the slowest tools."""
    slowest: dict[str, float] = {}
    for _key, rows in board.series:
        for row in rows:
            for tool, p95 in (row.tool_latency_p95 if row else {}).items():
                slowest[tool] = max(slowest.get(tool, 0.0), float(p95))
    tools = sorted(slowest, key=lambda tool: (-slowest[tool], tool))[:LATENCY_TOOLS_SHOWN]
    series = []
    for index, (key, rows) in enumerate(board.series):
        series.append(
            charts.Series(
                name=f"{key.label} · every tool p95",
                values=[_float(row.latency_p95) if row else None for row in rows],
                css=f"s{index} p95",
            )
        )
        # A compared series draws its tools dashed, in the same colours.
        dash = " p50" if index else ""
        series.extend(
            charts.Series(
                name=f"{key.label} · {tool} p95",
                values=[_float(row.tool_latency_p95.get(tool)) if row else None for row in rows],
                css=f"t{number}{dash}",
            )
            for number, tool in enumerate(tools)
        )
    return _chart_context(LATENCY_TITLE, series, board, label_format)


def _chart_context(title: str, series: list[charts.Series], board, label_format: str):
    return {
        "title": title,
        "svg": charts.line_chart(
            title=title, buckets=board.buckets, series=series, label_format=label_format
        ),
        "legend": [(line.name, line.css) for line in series],
        "series": series,
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _export_query(agent: str) -> str:
    return urlencode({"agent": agent}) if agent else ""


# --- drift ------------------------------------------------------------------------------------


@role_required(roles.ONCALL)
@require_GET
def drift(request: HttpRequest) -> HttpResponse:
    return _drift_page(request, DriftRuleForm())


def _drift_page(request: HttpRequest, form: DriftRuleForm, status: int = 200) -> HttpResponse:
    context = {
        "alerts": drift_rules.drift_alert_list(limit=100),
        "rules": drift_rules.drift_rule_list(),
        "form": form,
        "metrics": DriftMetric,
    }
    return render(request, "monitoring/drift.html", context, status=status)


@role_required(roles.ADMIN)
@require_POST
def drift_rule_create(request: HttpRequest) -> HttpResponse:
    """Admins only: a rule may disable an agent or change its policy."""
    form = DriftRuleForm(request.POST)
    if form.is_valid():
        try:
            rule = drift_rules.drift_rule_save(
                actor=actor_name(request.user), fields=form.cleaned_data
            )
        except ServiceError as error:
            detail = error.detail if isinstance(error.detail, list) else [str(error.detail)]
            for problem in detail:
                form.add_error(None, problem)
        else:
            messages.success(request, f"Drift rule {rule.name} saved.")
            return redirect("monitoring:drift")
    return _drift_page(request, form, status=422)


@role_required(roles.ADMIN)
@require_POST
def drift_rule_enabled(request: HttpRequest, rule_id: int) -> HttpResponse:
    enabled = request.POST.get("enabled") == "1"
    try:
        rule = drift_rules.drift_rule_save(
            actor=actor_name(request.user), fields={"enabled": enabled}, rule_id=rule_id
        )
    except NotFound as error:
        raise not_found(error) from None
    messages.success(request, f"Drift rule {rule.name} {'enabled' if enabled else 'disabled'}.")
    return redirect("monitoring:drift")


# --- golden runs, replays and dry runs --------------------------------------------------------


@role_required(roles.ONCALL)
@require_GET
def golden(request: HttpRequest) -> HttpResponse:
    """The golden runs; ``?replay=1`` replays them all against the policy in force (reads only)."""
    goldens = replay.golden_list()
    results = None
    if request.GET.get("replay") == "1":
        policy = policy_selectors.policy_current()
        results = replay.golden_replay(goldens, policy)
    context = {
        "goldens": goldens,
        "results": results,
        "differing": sum(1 for _, result in results or [] if result.changed),
        "form": GoldenMarkForm(),
    }
    return render(request, "monitoring/golden.html", context)


@role_required(roles.ONCALL)
@require_POST
def golden_mark(request: HttpRequest) -> HttpResponse:
    form = GoldenMarkForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the number of a finished run.")
        return redirect("monitoring:golden")
    run_id = form.cleaned_data["run_id"]
    try:
        replay.golden_mark(
            run_id=run_id, actor=actor_name(request.user), note=form.cleaned_data["note"]
        )
        messages.success(request, f"Run {run_id} is golden.")
    except ServiceError as error:
        messages.error(request, str(error.detail))
    after = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(after, allowed_hosts={request.get_host()}):
        after = reverse("monitoring:golden")
    return redirect(after)


@role_required(roles.ONCALL)
@require_POST
def golden_unmark(request: HttpRequest, run_id: int) -> HttpResponse:
    if replay.golden_unmark(run_id=run_id, actor=actor_name(request.user)):
        messages.success(request, f"Run {run_id} is no longer golden.")
    return redirect("monitoring:golden")


@role_required(roles.ONCALL)
@require_GET
def run_replay(request: HttpRequest, run_id: int) -> HttpResponse:
    """One run replayed against the policy in force, side by side with what happened."""
    try:
        run = runs_selectors.run_get(run_id=run_id)
        result = replay.replay_run(run)
    except NotFound as error:
        raise not_found(error) from None
    except ServiceError as error:
        return render(
            request, "monitoring/replay.html", {"run": run, "problem": error.detail}, status=409
        )
    return render(request, "monitoring/replay.html", {"run": run, "result": result})


@role_required(roles.ONCALL)
@require_http_methods(["GET", "POST"])
def dry_run(request: HttpRequest) -> HttpResponse:
    """Paste a draft policy: what would it have done to the recent runs? (Nothing is saved.)"""
    form = DryRunForm(request.POST or None)
    context: dict[str, Any] = {"form": form}
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            document = parse_yaml(form.cleaned_data["document"])
            context["dry_run"] = replay.policy_dry_run(document, limit=form.cleaned_data["limit"])
        except PolicyError as error:
            form.add_error("document", error.errors)
            status = 422
        except ServiceError as error:
            form.add_error("document", error.detail)
            status = 422
    elif request.method == "POST":
        status = 422
    template = "monitoring/dry_run.html#results" if request.htmx else "monitoring/dry_run.html"
    return render(request, template, context, status=status)


# --- exports and /metrics ---------------------------------------------------------------------


@role_required(roles.ONCALL)
@require_GET
def export(request: HttpRequest) -> HttpResponse:
    """Runs and traces as ``?format=jsonl|csv`` with the runs list's filters (see exports)."""
    fmt = request.GET.get("format", "jsonl")
    form = RunFilterForm(request.GET)
    if fmt not in exports.FORMATS or not form.is_valid():
        problems = "; ".join(
            f"{field}: {' '.join(errors)}" for field, errors in form.errors.items()
        )
        return HttpResponseBadRequest(
            f"Bad export request. format is jsonl or csv. {problems}".strip(),
            content_type="text/plain",
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = StreamingHttpResponse(
        exports.runs_export(format=fmt, filters=form.selector_filters()),
        content_type=exports.CONTENT_TYPES[fmt],
    )
    response["Content-Disposition"] = f'attachment; filename="runs-{stamp}.{fmt}"'
    return response


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format. Open unless ``OPSCONSOLE_METRICS_TOKEN`` is set; then the
    scraper must send ``Authorization: Bearer <token>``."""
    token = getattr(settings, "OPSCONSOLE_METRICS_TOKEN", "")
    if token:
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
            response = HttpResponse("unauthorized\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
