"""One websocket per console page: ``/ws/live/?topics=runs,run.12,approvals,killswitch``.

Rules:

- The session authenticates the socket in ``connect``; anonymous people and people without a
  role are refused (closed with 4403) before joining any group.
- Topics and who may follow them (see ``TOPIC_ROLES``): every role may watch runs, one run, the
  approvals queue, the kill switch, the breakers and the policy (on-call views everything;
  reviewers and admins include on-call); only admins follow the agents (their admin page).
  Every page follows ``killswitch``, the page chrome's topic: it carries the kill switch and the
  paused-agents and degraded-tools banners (``agents.paused_changed``, ``tools.degraded_changed``;
  the page re-fetches the banners over HTTP). Only reviewers *decide* approvals, and that is checked by the HTTP
  views, not here: the socket carries no actions. Unknown or forbidden topics are ignored.
- The socket carries only ids, statuses and counters; anything richer (arguments, outputs) the
  page fetches over HTTP, where the same role checks apply.
- Bursts are coalesced: per key (one run's updates, the approval events) at most one message
  per ``COALESCE_SECONDS``, the latest state wins, and id lists are merged. A runaway agent making
  50 calls a second sends a browser four messages a second, not fifty.
- The consumer holds no ORM writes.
- A socket lives no longer than the session that opened it: logging out closes the session's
  sockets at once (``opsconsole.live.session_sockets_close``, through a group per session), and
  at most every ``SESSION_RECHECK_SECONDS``, before carrying an event, the socket checks that its
  session still signs its person in (not removed or expired, password unchanged, person active)
  and still grants its topics; if not it closes (4401, or 4403 for a role taken away).
"""

from __future__ import annotations

import asyncio
import re
import time
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
from django.utils.crypto import constant_time_compare

from opsconsole import roles
from opsconsole.live import group_for, session_group

COALESCE_SECONDS = 0.25
MAX_RUN_TOPICS = 200
CLOSE_FORBIDDEN = 4403
CLOSE_SESSION_ENDED = 4401
# How stale a socket's knowledge of its session may get before an event makes it look again.
SESSION_RECHECK_SECONDS = 30.0

# The lowest role that may follow each topic ("run.<id>" is listed as "run").
TOPIC_ROLES = {
    "runs": roles.ONCALL,
    "run": roles.ONCALL,
    "approvals": roles.ONCALL,
    "killswitch": roles.ONCALL,
    "breakers": roles.ONCALL,
    "policy": roles.ONCALL,
    "agents": roles.ADMIN,  # the agents admin page
}
_RUN_TOPIC = re.compile(r"^run\.(\d{1,18})$")
# Events whose payload carries a list of ids: merged, not replaced, when coalesced.
_MERGED_IDS = {"approvals.added", "approvals.removed", "approvals.changed"}


def parse_topics(query_string: bytes) -> list[str]:
    raw = parse_qs(query_string.decode("latin-1")).get("topics", [""])[0]
    topics: list[str] = []
    for topic in (t.strip() for t in raw.split(",")):
        if topic and topic not in topics and (topic in TOPIC_ROLES or _RUN_TOPIC.match(topic)):
            topics.append(topic)
    runs = [t for t in topics if t.startswith("run.")]
    if len(runs) > MAX_RUN_TOPICS:
        topics = [t for t in topics if t not in runs[MAX_RUN_TOPICS:]]
    return topics


def group_of(topic: str) -> str:
    match = _RUN_TOPIC.match(topic)
    if match:
        return group_for("run", int(match.group(1)))
    return group_for(topic)


def coalesce_key(event: str, payload: dict[str, Any]) -> str:
    if event == "run.updated":
        return f"run.updated:{payload.get('id')}"
    if event == "breaker.updated":
        return f"breaker.updated:{payload.get('tool')}"
    return event


def merge(previous: dict[str, Any] | None, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    if previous is None or event not in _MERGED_IDS:
        return payload
    ids = list(previous.get("ids") or ([previous["id"]] if "id" in previous else []))
    for ident in payload.get("ids") or ([payload["id"]] if "id" in payload else []):
        if ident not in ids:
            ids.append(ident)
    return {**previous, **payload, "ids": ids}


def session_close_code(session_key: str, user_id: Any, topics: list[str]) -> int | None:
    """Why a socket must close now (``CLOSE_SESSION_ENDED``, ``CLOSE_FORBIDDEN``), or None.

    Django's ``get_user`` check for a request carrying this session's cookie (the backend, the
    password hash, the active flag), made read-only: it neither flushes nor cycles a session.
    """
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    try:
        session_user, backend_path = str(session[SESSION_KEY]), session[BACKEND_SESSION_KEY]
    except KeyError:
        return CLOSE_SESSION_ENDED
    if session_user != str(user_id) or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return CLOSE_SESSION_ENDED
    user = load_backend(backend_path).get_user(user_id)
    if user is None:  # removed, or no longer active
        return CLOSE_SESSION_ENDED
    session_hash = session.get(HASH_SESSION_KEY) or ""
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not any(constant_time_compare(session_hash, known) for known in hashes):
        return CLOSE_SESSION_ENDED
    if not all(roles.has_role(user, TOPIC_ROLES[topic.split(".")[0]]) for topic in topics):
        return CLOSE_FORBIDDEN
    return None


class LiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        level = await database_sync_to_async(roles.rank)(user)
        if level == 0:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        allowed = [
            topic
            for topic in parse_topics(self.scope.get("query_string", b""))
            if await database_sync_to_async(roles.has_role)(user, TOPIC_ROLES[topic.split(".")[0]])
        ]
        self.topics = allowed
        self.user_id = user.pk
        self.session_key = getattr(self.scope.get("session"), "session_key", None) or ""
        self.session_checked_at = time.monotonic()
        self.ended = False
        self.groups_joined = [group_of(topic) for topic in allowed]
        if self.session_key:
            self.groups_joined.append(session_group(self.session_key))
        self.pending: dict[str, tuple[str, dict[str, Any]]] = {}
        self.last_sent: dict[str, float] = {}
        self.flushers: dict[str, asyncio.TimerHandle] = {}
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"event": "hello", "payload": {"topics": allowed}})

    async def disconnect(self, code: int) -> None:
        await self._leave()

    async def _leave(self) -> None:
        for handle in getattr(self, "flushers", {}).values():
            handle.cancel()
        groups, self.groups_joined = getattr(self, "groups_joined", []), []
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _end(self, code: int) -> None:
        """Close, and carry nothing more: leave every group before the close goes out."""
        self.ended = True
        self.pending.clear()
        await self._leave()
        await self.close(code=code)

    async def _still_signed_in(self) -> bool:
        """Check the session again if the last check is ``SESSION_RECHECK_SECONDS`` old; close
        the socket if it no longer signs its person in."""
        if self.ended:
            return False
        if time.monotonic() - self.session_checked_at < SESSION_RECHECK_SECONDS:
            return True
        self.session_checked_at = time.monotonic()
        code = await database_sync_to_async(session_close_code)(
            self.session_key, self.user_id, self.topics
        )
        if code is not None:
            await self._end(code)
        return code is None

    async def session_ended(self, message: dict[str, Any]) -> None:
        """The session logged out (``opsconsole.live.session_sockets_close``)."""
        if not self.ended:
            await self._end(CLOSE_SESSION_ENDED)

    async def receive_json(self, content: Any, **kwargs) -> None:
        # The page only listens; a ping keeps proxies from closing an idle socket.
        is_ping = isinstance(content, dict) and content.get("type") == "ping"
        if is_ping and await self._still_signed_in():
            await self.send_json({"event": "pong", "payload": {}})

    async def live_event(self, message: dict[str, Any]) -> None:
        """A broadcast from ``opsconsole.live``: send now, or fold into the pending one."""
        if not await self._still_signed_in():
            return
        event, payload = message["event"], message.get("payload") or {}
        key = coalesce_key(event, payload)
        previous = self.pending.get(key)
        self.pending[key] = (event, merge(previous[1] if previous else None, event, payload))
        if key in self.flushers:
            return
        wait = self.last_sent.get(key, 0.0) + COALESCE_SECONDS - time.monotonic()
        if wait <= 0:
            await self._flush(key)
        else:
            loop = asyncio.get_running_loop()
            self.flushers[key] = loop.call_later(
                wait, lambda: asyncio.ensure_future(self._flush(key))
            )

    async def _flush(self, key: str) -> None:
        self.flushers.pop(key, None)
        item = self.pending.pop(key, None)
        if item is None or self.ended:
            return
        self.last_sent[key] = time.monotonic()
        event, payload = item
        await self.send_json({"event": event, "payload": payload})
