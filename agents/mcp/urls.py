"""The MCP servers page (included from opsconsole/web_urls.py under /policy/mcp/, namespace
``mcp``). The MCP endpoint itself is /mcp, mounted beside Django (agents/mcp/asgi.py)."""

from __future__ import annotations

from django.urls import path

from agents.mcp import views

app_name = "mcp"

urlpatterns = [
    path("", views.mcp_servers, name="servers"),
    path("tools/<str:tool>/accept", views.mcp_tool_accept, name="accept"),
]
