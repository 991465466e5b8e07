from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from agents.gateway import api as gateway_api
from agents.monitoring import views as monitoring_views
from agents.policy import api as policy_api
from agents.registry import api as registry_api
from agents.runs import api as runs_api
from agents.telemetry import api as telemetry_api
from approvals import api as approval_api
from opsconsole.login import ThrottledAdminLoginView

api_v1 = [
    # GET lists runs (people, the automation API); POST starts one (agents, the gateway's view).
    path("runs", runs_api.RunCollectionView.as_view(), name="run-create"),
    path("runs/<int:run_id>", gateway_api.RunDetailView.as_view(), name="run-detail"),
    path("runs/<int:run_id>/steps", gateway_api.StepCreateView.as_view(), name="step-create"),
    path("runs/<int:run_id>/steps/gate", gateway_api.StepGateView.as_view(), name="step-gate"),
    path(
        "runs/<int:run_id>/steps/<int:ticket>/usage",
        gateway_api.StepUsageView.as_view(),
        name="step-usage",
    ),
    path(
        "runs/<int:run_id>/tool-calls",
        gateway_api.ToolCallCreateView.as_view(),
        name="tool-call-create",
    ),
    path("runs/<int:run_id>/finish", gateway_api.RunFinishView.as_view(), name="run-finish"),
    path("runs/<int:run_id>/cancel", gateway_api.RunCancelView.as_view(), name="run-cancel"),
    path("tool-calls/<int:tool_call_id>", gateway_api.tool_call_detail, name="tool-call-detail"),
    path(
        "tool-calls/<int:tool_call_id>/result",
        gateway_api.ToolResultView.as_view(),
        name="tool-call-result",
    ),
    path("approvals", approval_api.ApprovalListView.as_view(), name="approval-list"),
    path(
        "approvals/<int:request_id>/decision",
        approval_api.ApprovalDecisionView.as_view(),
        name="approval-decide",
    ),
    path("kill-switch", policy_api.KillSwitchView.as_view(), name="kill-switch"),
    # The automation API (people's tokens, the console's roles).
    path("agents", registry_api.AgentListView.as_view(), name="agent-list"),
    path("agents/<slug:name>", registry_api.AgentDetailView.as_view(), name="agent-detail"),
    path(
        "agents/<slug:name>/keys", registry_api.AgentKeyIssueView.as_view(), name="agent-key-issue"
    ),
    path(
        "agents/<slug:name>/enabled",
        registry_api.AgentEnabledView.as_view(),
        name="agent-set-enabled",
    ),
    path(
        "agent-keys/<int:key_id>/revoke",
        registry_api.AgentKeyRevokeView.as_view(),
        name="agent-key-revoke",
    ),
    path("policy", policy_api.PolicyView.as_view(), name="policy"),
    path("policy/dry-run", policy_api.PolicyDryRunView.as_view(), name="policy-dry-run"),
    path(
        "schema/",
        SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[]),
        name="schema",
    ),
]


def _admin_site_urls() -> tuple[list, str, str]:
    """The admin site's URLs with its sign-in throttled like the console's (opsconsole/login.py):
    an admin session opens the console too."""
    patterns, app_name, namespace = admin.site.urls
    patterns = [
        path("login/", ThrottledAdminLoginView.as_view(), name="login")
        if getattr(pattern, "name", None) == "login"
        else pattern
        for pattern in patterns
    ]
    return patterns, app_name, namespace


urlpatterns = [
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    path("django-admin/", _admin_site_urls()),
    path("metrics", monitoring_views.metrics, name="metrics"),
    # OTLP/HTTP: where an exporter sends with OTEL_EXPORTER_OTLP_ENDPOINT=<console> (docs/telemetry.md)
    path("v1/traces", telemetry_api.traces, name="otlp-traces"),
    # The other signals the same exporter settings send: a 404 that says to send traces alone.
    path("v1/metrics", telemetry_api.metrics, name="otlp-metrics"),
    path("v1/logs", telemetry_api.logs, name="otlp-logs"),
    path("", include("opsconsole.web_urls")),
]
