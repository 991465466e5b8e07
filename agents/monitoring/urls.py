"""Console URLs of the monitoring pages, included from opsconsole/web_urls.py as
``path("monitoring/", include("agents.monitoring.urls"))`` (namespace ``monitoring``)."""

from __future__ import annotations

from django.urls import path

from agents.monitoring import views

app_name = "monitoring"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("drift/", views.drift, name="drift"),
    path("drift/rules", views.drift_rule_create, name="drift_rule_create"),
    path("drift/rules/<int:rule_id>/enabled", views.drift_rule_enabled, name="drift_rule_enabled"),
    path("golden/", views.golden, name="golden"),
    path("golden/mark", views.golden_mark, name="golden_mark"),
    path("golden/<int:run_id>/unmark", views.golden_unmark, name="golden_unmark"),
    path("runs/<int:run_id>/replay", views.run_replay, name="run_replay"),
    path("dry-run", views.dry_run, name="dry_run"),
    path("export", views.export, name="export"),
]
