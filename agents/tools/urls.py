"""Console URLs of the tool pages (included from opsconsole/web_urls.py, namespace ``tools``)."""

from __future__ import annotations

from django.urls import path

from agents.tools import views

app_name = "tools"

urlpatterns = [
    path("<str:tool>/", views.tool_detail, name="detail"),
    path("<str:tool>/degrade", views.tool_degrade, name="degrade"),
    path("<str:tool>/lift", views.tool_lift, name="lift"),
]
