"""Console URLs of the policy pages (included from opsconsole/web_urls.py, namespace ``policy``).

The kill switch page is ``/kill-switch/`` (URL name ``kill_switch``), wired in web_urls.py.
"""

from __future__ import annotations

from django.urls import path

from agents.policy import views

app_name = "policy"

urlpatterns = [
    path("", views.policy_current, name="current"),
    path("edit", views.policy_edit, name="edit"),
    path("export", views.policy_export, name="export"),
    path("tools/new", views.policy_tool, name="tool_new"),
    path("tools/<str:name>", views.policy_tool, name="tool"),
    path("budgets", views.policy_budgets, name="budgets"),
    path("budgets/<slug:agent>", views.policy_budgets, name="agent_budgets"),
    path("versions/", views.policy_versions, name="versions"),
    path("versions/<int:number>/", views.policy_version, name="version"),
    path("versions/<int:number>/restore", views.policy_restore, name="restore"),
]
