"""Live updates: a service commits, then broadcasts through ``broadcast`` (after commit).

A broken channel layer (Redis down) never fails the decision that triggered the update.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger("opsconsole.live")


def group_for(scope: str, ident: Any = "") -> str:
    """Group names: ``runs``, ``run.<id>``, ``approvals``, ``killswitch``."""
    return f"{scope}.{ident}" if ident != "" else scope


def broadcast(groups: list[str], event: str, payload: dict[str, Any]) -> None:
    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        message = {"type": "live.event", "event": event, "payload": payload}
        for group in groups:
            try:
                async_to_sync(layer.group_send)(group, message)
            except Exception as exc:  # noqa: BLE001 - live updates degrade, decisions do not
                logger.warning("live update to %s dropped: %s", group, exc)

    transaction.on_commit(send)
