"""The web console's pages: each app's own URLs, and the cross-cutting pages of opsconsole/."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from agents.policy import views as policy_views
from agents.runs import views as runs_views
from opsconsole import views
from opsconsole.login import ThrottledLoginView

urlpatterns = [
    path("", runs_views.overview, name="overview"),
    # Browsers ask for /favicon.ico whatever the page links.
    path(
        "favicon.ico",
        RedirectView.as_view(url=static("favicon.svg"), permanent=True),
        name="favicon",
    ),
    path("healthz", views.healthz, name="healthz"),
    path("status/", views.console_status, name="console_status"),
    path("status/banners/", views.console_banners, name="console_banners"),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("runs/", include("agents.runs.urls")),
    path("agents/", include("agents.registry.urls")),
    path("policy/mcp/", include("agents.mcp.urls")),
    path("policy/", include("agents.policy.urls")),
    path("tools/", include("agents.tools.urls")),
    path("approvals/", include("approvals.urls")),
    path("kill-switch/", policy_views.kill_switch, name="kill_switch"),
    path("audit/", views.audit, name="audit"),
    path("webhooks/", views.webhooks, name="webhooks"),
    path("monitoring/", include("agents.monitoring.urls")),
]
