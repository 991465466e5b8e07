from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from agents.gateway import api as gateway_api
from agents.monitoring import views as monitoring_views
from agents.policy import api as policy_api
from approvals import api as approval_api
from opsconsole.login import ThrottledAdminLoginView

api_v1 = [
    path("runs", gateway_api.RunCreateView.as_view(), name="run-create"),
    path("runs/<int:run_id>", gateway_api.RunDetailView.as_view(), name="run-detail"),
    path("runs/<int:run_id>/steps", gateway_api.StepCreateView.as_view(), name="step-create"),
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
    path("", include("opsconsole.web_urls")),
]
