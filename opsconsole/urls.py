from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from agents import api as agent_api
from agents import monitoring_views
from approvals import api as approval_api
from opsconsole import api as ops_api

api_v1 = [
    path("runs", agent_api.RunCreateView.as_view(), name="run-create"),
    path("runs/<int:run_id>", agent_api.RunDetailView.as_view(), name="run-detail"),
    path("runs/<int:run_id>/steps", agent_api.StepCreateView.as_view(), name="step-create"),
    path(
        "runs/<int:run_id>/tool-calls",
        agent_api.ToolCallCreateView.as_view(),
        name="tool-call-create",
    ),
    path("runs/<int:run_id>/finish", agent_api.RunFinishView.as_view(), name="run-finish"),
    path("runs/<int:run_id>/cancel", agent_api.RunCancelView.as_view(), name="run-cancel"),
    path("tool-calls/<int:tool_call_id>", agent_api.tool_call_detail, name="tool-call-detail"),
    path(
        "tool-calls/<int:tool_call_id>/result",
        agent_api.ToolResultView.as_view(),
        name="tool-call-result",
    ),
    path("approvals", approval_api.ApprovalListView.as_view(), name="approval-list"),
    path(
        "approvals/<int:request_id>/decision",
        approval_api.ApprovalDecisionView.as_view(),
        name="approval-decide",
    ),
    path("kill-switch", ops_api.KillSwitchView.as_view(), name="kill-switch"),
    path(
        "schema/",
        SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[]),
        name="schema",
    ),
]

urlpatterns = [
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    path("django-admin/", admin.site.urls),
    path("metrics", monitoring_views.metrics, name="metrics"),
    path("", include("opsconsole.web_urls")),
]
