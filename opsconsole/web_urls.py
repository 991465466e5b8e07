"""The web console's pages (see the views of each app)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path

from agents import urls as agent_urls
from opsconsole import views
from opsconsole.login import ThrottledLoginView

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", views.healthz, name="healthz"),
    path("status/", views.console_status, name="console_status"),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("runs/", include((agent_urls.run_patterns, "runs"))),
    path("agents/", include((agent_urls.agent_patterns, "agents"))),
    path("policy/", include((agent_urls.policy_patterns, "policy"))),
    path("approvals/", include("approvals.urls")),
    path("kill-switch/", views.kill_switch, name="kill_switch"),
    path("audit/", views.audit, name="audit"),
    path("webhooks/", views.webhooks, name="webhooks"),
    path("monitoring/", include("agents.monitoring_urls")),
]
