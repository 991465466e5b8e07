"""Console URLs of the runs pages (included from opsconsole/web_urls.py, namespace ``runs``)."""

from __future__ import annotations

from django.urls import path

from agents.runs import views

app_name = "runs"

urlpatterns = [
    path("", views.run_list, name="list"),
    path("<int:run_id>/", views.run_detail, name="detail"),
    path("<int:run_id>/cancel", views.run_cancel, name="cancel"),
]
