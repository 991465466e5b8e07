"""Live updates: a service commits, then broadcasts through ``broadcast`` (after commit).

A broken channel layer (Redis down) never fails the decision that triggered the update.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger("opsconsole.live")


def group_for(scope: str, ident: Any = "") -> str:
    """Group names: ``runs``, ``run.<id>``, ``approvals``, ``killswitch``.

    ``killswitch`` is the group every console page follows (templates/base.html), so it carries
    every banner of the page chrome: ``killswitch.changed``, ``agents.paused_changed`` and
    ``tools.degraded_changed``."""
    return f"{scope}.{ident}" if ident != "" else scope


def session_group(session_key: str) -> str:
    """The group of the sockets one browser session opened. Named by a hash: group names are
    visible in Redis, and a session key signs a person in."""
    return group_for("session", hashlib.sha256(session_key.encode()).hexdigest()[:40])


def session_sockets_close(session_key: str | None) -> None:
    """Close every socket the session opened (``LiveConsumer.session_ended``), now: the
    session is ending, whether or not a transaction is open."""
    layer = get_channel_layer()
    if not session_key or layer is None:
        return
    try:
        async_to_sync(layer.group_send)(session_group(session_key), {"type": "session.ended"})
    except Exception as exc:  # noqa: BLE001 - the socket's own re-check closes it later
        logger.warning("sockets of an ended session not closed: %s", exc)


def close_sockets_at_logout(sender, request=None, **kwargs) -> None:
    """``user_logged_out`` receiver (connected in apps.py): the only thing a signal drives here,
    because logging out happens in Django's view, not in a service of ours."""
    session = getattr(request, "session", None)
    session_sockets_close(getattr(session, "session_key", None))


def broadcast(groups: list[str], event: str, payload: dict[str, Any]) -> None:
    broadcast_many([(groups, event, payload)])


def broadcast_many(updates: list[tuple[list[str], str, dict[str, Any]]]) -> None:
    """Send (groups, event, payload) updates after commit, all in one hop to the event loop (a
    batch of OTLP spans updates dozens of runs at once; one hop each cost more than storing)."""
    if not updates:
        return

    async def send_all(layer: Any) -> None:
        for groups, event, payload in updates:
            message = {"type": "live.event", "event": event, "payload": payload}
            for group in groups:
                try:
                    await layer.group_send(group, message)
                except Exception as exc:  # noqa: BLE001 - live updates degrade, decisions do not
                    logger.warning("live update to %s dropped: %s", group, exc)

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(send_all)(layer)
        except Exception as exc:  # noqa: BLE001 - live updates degrade, decisions do not
            logger.warning("live updates dropped: %s", exc)

    transaction.on_commit(send)
