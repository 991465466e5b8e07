from __future__ import annotations

from django.urls import path

from opsconsole.consumers import LiveConsumer

websocket_urlpatterns: list = [path("ws/live/", LiveConsumer.as_asgi())]
