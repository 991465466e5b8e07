"""Console URLs of the runs, agents and policy pages (included from opsconsole/web_urls.py)."""

from __future__ import annotations

from django.urls import path

from agents import views

run_patterns = [
    path("", views.run_list, name="list"),
    path("<int:run_id>/", views.run_detail, name="detail"),
    path("<int:run_id>/cancel", views.run_cancel, name="cancel"),
]

agent_patterns = [
    path("", views.agent_list, name="list"),
    path("keys/<int:key_id>/revoke", views.agent_key_revoke, name="key_revoke"),
    path("<slug:name>/", views.agent_detail, name="detail"),
    path("<slug:name>/keys", views.agent_key_issue, name="key_issue"),
    path("<slug:name>/enabled", views.agent_set_enabled, name="set_enabled"),
]

policy_patterns = [
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
