"""Console URLs of the approvals queue (included from opsconsole/web_urls.py)."""

from __future__ import annotations

from django.urls import path

from approvals import views

app_name = "approvals"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("history/", views.history, name="history"),
    path("badge", views.badge, name="badge"),
    path("<int:request_id>/", views.card, name="card"),
    path("<int:request_id>/decide", views.decide, name="decide"),
]
