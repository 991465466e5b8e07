"""Waiting for an approval's state to change, woken by the change itself instead of by polling.

An agent waiting for a reviewer (the long poll ``GET /api/v1/tool-calls/{id}?wait=N``, and the MCP
front door's held calls) calls :func:`approval_wait` between reads of the request's state; every
writer of that state calls :func:`approval_wake` (``approvals.services``: a decision, an expiry, a
cancel because the run stopped), which fires after its transaction commits.

How a wake travels:

- to waiters in the same process directly, after commit (thread-safe: the writer is usually a
  sync view's thread, the waiter a coroutine on the event loop);
- to other processes on PostgreSQL by ``NOTIFY approvals_wake, '<tool call id>'``, sent inside
  the writer's transaction (PostgreSQL delivers it at commit, never on rollback), whatever the
  channel layer; each process that has waiters holds one ``LISTEN`` connection, so a wake is one
  message per process, not one per waiter;
- elsewhere (SQLite with a Redis channel layer) through the channel layer's group
  ``approvals.wake``, one listener per process. The in-memory layer reaches only its own process,
  which the direct path already covers.

A wake that is lost (Redis down, a listener restarting, a wake that came between the caller's
read and its wait) costs at most the safety poll: a wait never lasts longer than
``SAFETY_POLL_SECONDS`` (``DEGRADED_POLL_SECONDS`` while the listener cannot reach the layer),
and callers re-read the state after every return. A wake that came just before a wait began
(within ``RECENT_SECONDS``) ends that wait at once, so the common race costs one extra read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref

from asgiref.sync import async_to_sync
from channels.layers import (  # type: ignore[import-untyped]
    InMemoryChannelLayer,
    get_channel_layer,
)
from django.db import connection, connections, transaction

logger = logging.getLogger("opsconsole.approvals.waits")

GROUP = "approvals.wake"
CHANNEL = "approvals_wake"  # PostgreSQL's NOTIFY channel
# The longest one wait lasts when wakes travel: the safety net under a lost message.
SAFETY_POLL_SECONDS = 5.0
# ... and while this process's listener cannot reach the channel layer.
DEGRADED_POLL_SECONDS = 1.0
# A wake this recent ends a task's first wait on the request at once (it may have come between
# the caller's read and the wait).
RECENT_SECONDS = 1.0
# The listener renews its group membership this often (channels_redis expires groups).
RENEW_SECONDS = 3600.0


class _State:
    lock = threading.Lock()
    # tool call id -> the events of the waiters in this process, each with its loop
    waiters: dict[int, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
    # tool call id -> (wakes seen by this process, when the last one came)
    wakes: dict[int, tuple[int, float]] = {}
    # event loop -> its listener task (one per loop that has waited, with a cross-process layer)
    listeners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    # Whether this process's listener is receiving (until it first is, waits poll faster).
    listener_healthy = False
    # task -> {tool call id: the wake count it has seen}
    seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _on_postgresql() -> bool:
    return connections["default"].vendor == "postgresql"


def _crosses_processes(layer: object) -> bool:
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


def _wake_locally(tool_call_id: int) -> None:
    now = time.monotonic()
    with _State.lock:
        count, _ = _State.wakes.get(tool_call_id, (0, 0.0))
        _State.wakes[tool_call_id] = (count + 1, now)
        if len(_State.wakes) > 10_000:
            for key, (_, at) in list(_State.wakes.items()):
                if now - at > 60:
                    del _State.wakes[key]
        waiters = list(_State.waiters.get(tool_call_id, ()))
    for loop, event in waiters:
        with contextlib.suppress(RuntimeError):  # a closed loop: its waiter is gone
            loop.call_soon_threadsafe(event.set)


def _wake_now(tool_call_id: int) -> None:
    _wake_locally(tool_call_id)
    layer = get_channel_layer()
    if _on_postgresql() or not _crosses_processes(layer):
        return
    try:
        async_to_sync(layer.group_send)(GROUP, {"type": "approval.wake", "id": tool_call_id})
    except Exception as exc:  # noqa: BLE001 - waiters elsewhere fall back on their safety poll
        logger.warning("approval wake for tool call %s not sent: %s", tool_call_id, exc)


def approval_wake(tool_call_id: int) -> None:
    """Called on commit wherever the state changes (approval_decide, _expire, approvals_cancel_for_run).

    Inside a transaction the wake waits for its commit (and is dropped on rollback); outside
    one it goes now."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, str(tool_call_id)])
    transaction.on_commit(lambda: _wake_now(tool_call_id))


async def _listen() -> None:
    """This process's one receiver of cross-process wakes (runs for the life of its loop)."""
    layer = get_channel_layer()
    channel = None
    renewed = 0.0
    while True:
        try:
            if channel is None:
                channel = await layer.new_channel()
            if time.monotonic() - renewed > RENEW_SECONDS:
                await layer.group_add(GROUP, channel)
                renewed = time.monotonic()
            _State.listener_healthy = True
            message = await layer.receive(channel)
            if message.get("type") == "approval.wake":
                _wake_locally(int(message["id"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep listening; waits poll meanwhile
            if _State.listener_healthy:
                logger.warning("approval wakes from other processes paused: %s", exc)
            _State.listener_healthy = False
            channel, renewed = None, 0.0
            await asyncio.sleep(DEGRADED_POLL_SECONDS)


async def _listen_postgresql() -> None:
    """This process's one ``LISTEN`` connection (runs for the life of its loop)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    while True:
        try:
            db = connections["default"].settings_dict
            params = {
                "dbname": db.get("NAME"),
                "user": db.get("USER") or None,
                "password": db.get("PASSWORD") or None,
                "host": db.get("HOST") or None,
                "port": db.get("PORT") or None,
                "connect_timeout": 3,
            }
            conninfo = make_conninfo("", **{k: v for k, v in params.items() if v is not None})
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                _State.listener_healthy = True
                async for notice in conn.notifies():
                    if notice.payload.isdigit():
                        _wake_locally(int(notice.payload))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep listening; waits poll meanwhile
            if _State.listener_healthy:
                logger.warning("approval wakes from other processes paused: %s", exc)
            _State.listener_healthy = False
            await asyncio.sleep(DEGRADED_POLL_SECONDS)


def _ensure_listener(loop: asyncio.AbstractEventLoop) -> float:
    """Start this loop's listener if wakes cross processes; returns the safety poll to use."""
    if _on_postgresql():
        listen = _listen_postgresql
    elif _crosses_processes(get_channel_layer()):
        listen = _listen
    else:
        return SAFETY_POLL_SECONDS  # one process: every wake is direct
    task = _State.listeners.get(loop)
    if task is None or task.done():
        _State.listeners[loop] = loop.create_task(listen())
    return SAFETY_POLL_SECONDS if _State.listener_healthy else DEGRADED_POLL_SECONDS


async def approval_wait(tool_call_id: int, timeout: float) -> None:
    """Return as soon as the tool call's approval state may have changed (decided, expired, cancelled, run stopped) or after `timeout` seconds; callers re-read the state."""
    if timeout <= 0:
        return
    loop = asyncio.get_running_loop()
    poll = _ensure_listener(loop)
    task = asyncio.current_task()
    seen = _State.seen.setdefault(task, {}) if task is not None else {}
    now = time.monotonic()
    with _State.lock:
        count, at = _State.wakes.get(tool_call_id, (0, 0.0))
        baseline = seen.get(tool_call_id)
        if baseline is None:
            baseline = count - 1 if count and now - at <= RECENT_SECONDS else count
        if count > baseline:
            seen[tool_call_id] = count
            return
        event = asyncio.Event()
        _State.waiters.setdefault(tool_call_id, set()).add((loop, event))
    try:
        await asyncio.wait_for(event.wait(), min(timeout, poll))
    except TimeoutError:
        pass
    finally:
        with _State.lock:
            waiting = _State.waiters.get(tool_call_id)
            if waiting is not None:
                waiting.discard((loop, event))
                if not waiting:
                    del _State.waiters[tool_call_id]
            seen[tool_call_id] = _State.wakes.get(tool_call_id, (0, 0.0))[0]
