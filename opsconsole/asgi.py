"""ASGI entry point: HTTP through Django, websockets through Channels (session-authenticated)."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsconsole.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from agents.gateway.core import ToolCallFastPath  # noqa: E402
from agents.mcp.asgi import WithMcp  # noqa: E402
from opsconsole.limits import RequestBodyLimit  # noqa: E402
from opsconsole.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # The gateway's fast path answers plain allowed tool calls before Django
        # (agents/gateway/core.py); it hands every other request to Django unchanged.
        # /mcp is the MCP endpoint (agents/mcp/asgi.py: its own body limit and agent keys).
        "http": WithMcp(RequestBodyLimit(ToolCallFastPath(django_asgi_app))),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

if settings.OPSCONSOLE_EMBEDDED_SCHEDULER:
    from opsconsole import scheduler  # noqa: E402

    scheduler.start()

# Load every view now, then move everything alive after start-up out of the garbage collector's
# reach: the imported code, URLconf and settings live as long as the process, and scanning them in
# every full collection paused a worker for 40-50 ms, which was the slowest live update and the
# slowest gateway decision under load (docs/performance.md). Objects created later are collected as
# usual.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018 - imports every view module
gc.collect()
gc.freeze()
