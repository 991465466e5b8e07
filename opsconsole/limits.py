"""Abuse limits for the agent API: per-agent rate limits and the size cap on tool arguments.

Rate limits are DRF throttles (the 429 and its ``Retry-After`` come from DRF and the API's error
handler). The counting differs from DRF's stock ``SimpleRateThrottle``, which reads a list of
timestamps, appends and writes it back: parallel requests from many workers all read the same
list and all pass, and a burst is exactly what a limit is for. Here each window is one counter
bumped with the cache's atomic ``incr`` (``INCR`` in Redis), so the limit holds across processes
and machines. The window is fixed (``<n>/<period>`` per period, aligned on the clock).

The limit **fails open**: when the cache (Redis) cannot be reached the request is allowed and a
warning is logged. Rate limiting protects the control plane from load; the control plane's own
decisions (budgets, allowlist, approvals, kill switch) keep every call bounded, and the gateway
must keep deciding when Redis is down (issue 5, faults). After a cache failure the limiter
skips the cache for a few seconds, so a black-holed Redis does not add a timeout to every call.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connection
from rest_framework import exceptions, parsers
from rest_framework.throttling import SimpleRateThrottle

from opsconsole.api_errors import TOO_LARGE
from opsconsole.errors import ServiceError

# The wall clock, a seam for tests (windows are aligned on it).
_clock = time.time


def rate_window(period: int) -> int:
    """The number of the fixed window of ``period`` seconds this moment falls in: Django's
    throttles and the gateway's fast path count in the same windows, on the same clock."""
    return int(_clock() // period)


logger = logging.getLogger("opsconsole.limits")

# After the cache fails, rate limiting is skipped (requests allowed) for this long.
CACHE_RETRY_SECONDS = 5.0


class _CacheHealth:
    """Remembers a recent cache failure, per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_until = 0.0

    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, exc: Exception) -> None:
        with self._lock:
            first = self.usable()
            self._down_until = time.monotonic() + CACHE_RETRY_SECONDS
        if first:
            logger.warning(
                "rate limiting is off for %.0f s: the cache cannot be reached (%s)",
                CACHE_RETRY_SECONDS,
                exc,
            )

    def reset(self) -> None:
        with self._lock:
            self._down_until = 0.0


cache_health = _CacheHealth()


def _agent_identity(agent: Any) -> str:
    # The id alone can come back (a restored database, a rolled-back test): with the creation
    # time, a new agent never inherits an old one's counters.
    created = getattr(agent, "created_at", None)
    return f"{agent.pk}.{int(created.timestamp() * 1_000_000) if created else 0}"


class AgentRateThrottle(SimpleRateThrottle):
    """``settings.OPSCONSOLE_RATE_LIMITS[scope]``, e.g. ``"600/min"``, per agent; ``None`` is off.

    The rate is read per request (not at import, as DRF does), so it follows the settings.
    """

    scope = ""
    cache_format = "throttle:%(db)s:%(scope)s:%(ident)s:%(window)d"

    def __init__(self) -> None:
        # SimpleRateThrottle reads the rate here; it is read per request in allow_request.
        self.now = 0.0
        self.window_ends = 0.0

    def get_rate(self) -> str | None:
        return settings.OPSCONSOLE_RATE_LIMITS.get(self.scope)

    def allow_request(self, request: Any, view: Any) -> bool:
        rate = self.get_rate()
        agent = getattr(request, "user", None)
        if not rate or agent is None or not getattr(agent, "pk", None):
            return True
        limit, period = self.parse_rate(rate)
        self.now = _clock()
        window = int(self.now // period)
        self.window_ends = (window + 1) * period
        key = self.cache_format % {
            # Agent ids are per database: two deployments (or test runs) sharing one Redis
            # must not share counters.
            "db": connection.settings_dict.get("NAME", ""),
            "scope": self.scope,
            "ident": _agent_identity(agent),
            "window": window,
        }
        if not cache_health.usable():
            return True
        cache = caches[settings.OPSCONSOLE_RATE_LIMIT_CACHE]
        try:
            # add() is a no-op when the window's counter exists; incr() is atomic.
            cache.add(key, 0, timeout=period + 1)
            count = cache.incr(key)
        except ValueError:
            # The counter expired between add() and incr(): this is the window's first call.
            return True
        except Exception as exc:  # noqa: BLE001 - any cache failure degrades to allowing
            cache_health.failed(exc)
            return True
        return count <= limit

    def wait(self) -> float:
        return max(1, math.ceil(self.window_ends - self.now))


class RunCreateRateThrottle(AgentRateThrottle):
    scope = "runs"


class ToolCallRateThrottle(AgentRateThrottle):
    scope = "tool_calls"


class ArgumentsTooLarge(ServiceError):
    status = 413
    code = "args_too_large"


def check_args_size(args: Any) -> None:
    """Refuse tool arguments over ``OPSCONSOLE_MAX_ARGS_BYTES`` (serialised as JSON) with 413."""
    cap = settings.OPSCONSOLE_MAX_ARGS_BYTES
    size = len(json.dumps(args, separators=(",", ":"), default=str).encode())
    if size > cap:
        raise ArgumentsTooLarge(
            f"args are {size} bytes as JSON, over the cap of {cap}.",
            extra={"limit_bytes": cap, "size_bytes": size},
        )


MAX_JSON_DEPTH = 64


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (iterative: no recursion limit to hit)."""
    return _walk(value)[0]


# What no database here can store: U+0000 (PostgreSQL text and jsonb) and lone surrogates
# U+D800-U+DFFF (not encodable as UTF-8: a 503 on PostgreSQL, a 500 on every later read of the
# row on SQLite). JSON can still spell both as \u escapes.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _walk(value: Any) -> tuple[int, bool]:
    """(nesting depth, whether a string or key holds a character no database can store)."""
    deepest, nul, stack = 0, False, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            nul = nul or _UNSTORABLE.search(item) is not None
        elif isinstance(item, dict):
            deepest = max(deepest, depth)
            nul = nul or any(_UNSTORABLE.search(key) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest, nul


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing bodies nested past ``MAX_JSON_DEPTH`` or holding U+0000
    (which PostgreSQL cannot store) with a 400.

    Python's decoder raises RecursionError (a 500) on very deep nesting, and moderately deep
    documents would reach the recursion limit later, in schema validation or hashing.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
        depth, nul = _walk(data)
        if depth > MAX_JSON_DEPTH:
            raise exceptions.ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels.")
        if nul:
            # Refused here, not a 503 (or a page that 500s for everyone) later.
            raise exceptions.ParseError(
                "JSON strings must not contain \\u0000 or unpaired surrogates (\\ud800-\\udfff)."
            )
        return data


# --- request bodies ------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class RequestBodyLimit:
    """ASGI middleware: no request body larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is read.

    Django's ASGI handler reads the whole body (spooling it to disk) before any Django middleware
    runs, so a check there comes after the upload. Here a declared ``Content-Length`` over the
    cap is refused before a byte is read, and a streamed body without one is cut as soon as it
    passes the cap. Either way the answer is a 413: the API's JSON error under /api/, plain text
    elsewhere.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope["type"] == "http":
            # A front door with bodies of its own size (OTLP trace batches) has its own cap.
            limit = settings.OPSCONSOLE_BODY_LIMITS.get(scope.get("path", ""), limit)
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, send)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            # Raised while Django reads the body, before it has started a response.
            await _refuse(scope, send)


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(scope: dict[str, Any], send: Any) -> None:
    if scope.get("path", "").startswith("/api/"):
        body, content_type = json.dumps(TOO_LARGE).encode(), b"application/json"
    else:
        body = b"The request body is larger than the server accepts."
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
