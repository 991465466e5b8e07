"""Console URLs of the agents pages (included from opsconsole/web_urls.py, namespace ``agents``)."""

from __future__ import annotations

from django.urls import path

from agents.registry import views

app_name = "agents"

urlpatterns = [
    path("", views.agent_list, name="list"),
    path("keys/<int:key_id>/revoke", views.agent_key_revoke, name="key_revoke"),
    path("<slug:name>/", views.agent_detail, name="detail"),
    path("<slug:name>/keys", views.agent_key_issue, name="key_issue"),
    path("<slug:name>/enabled", views.agent_set_enabled, name="set_enabled"),
    path("<slug:name>/pause", views.agent_pause, name="pause"),
    path("<slug:name>/mode", views.agent_set_mode, name="set_mode"),
    path("<slug:name>/migration-path", views.agent_migration_path, name="migration_path"),
    path("<slug:name>/resume", views.agent_resume, name="resume"),
]
