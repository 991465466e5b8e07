"""The OTLP/HTTP trace receiver: ``POST /v1/traces``, where an OpenTelemetry exporter sends with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://<console>`` (docs/telemetry.md).

Thin: authenticate the agent key, refuse what must be refused as a whole, decode, call the
service, answer in the request's encoding. The answer is sent after the batch committed (never a
200 before the spans are durable), and a condition that passes is a 429 or 503 with
``Retry-After`` (the exporters retry those), never a 500 (they drop the batch on a 500):

- 401 no or bad key, 403 a person's token; 405 not a POST; 415 not protobuf or JSON, or an
  encoding other than gzip/deflate; 413 over ``OPSCONSOLE_OTLP_MAX_BODY_BYTES`` as sent or
  ``OPSCONSOLE_OTLP_MAX_DECODED_BYTES`` decompressed; 400 nothing decodes;
- 429 over the agent's ``OPSCONSOLE_RATE_OTLP`` (export requests per period);
- 503 more than ``OPSCONSOLE_OTLP_MAX_PENDING`` export requests already waiting in this worker
  (``Retry-After``: the time that backlog takes to drain at the recent pace), or the database
  cannot be reached.

``POST /v1/metrics`` and ``POST /v1/logs``, where the same exporter configuration sends the other
signals, are answered 404 (not retryable: the exporter drops them instead of retrying) with a
``google.rpc.Status`` in the request's encoding saying how to send traces alone; after the same
authentication (401/403).

What became of each span and each request is counted for ``/metrics`` (``metrics.py``).
"""

from __future__ import annotations

import logging
import math
import time
from types import SimpleNamespace
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import AuthenticationFailed

from agents.telemetry import wire
from agents.telemetry.metrics import REQUESTS, SPANS
from agents.telemetry.services import IngestOutcome, spans_decode, traces_ingest
from opsconsole.authentication import authenticate_bearer, is_agent
from opsconsole.limits import AgentRateThrottle

logger = logging.getLogger("opsconsole.telemetry")


class TraceExportThrottle(AgentRateThrottle):
    """``OPSCONSOLE_RATE_OTLP`` export requests per agent (opsconsole/limits.py counts them)."""

    scope = "otlp"


class _Backlog:
    """Export requests admitted by this worker and not answered yet, and the recent time one
    takes: past the cap a request is refused at once with a Retry-After that matches the drain
    time, rather than queued until the exporter's own timeout (10 s) gives up on it."""

    def __init__(self) -> None:
        self.pending = 0
        self.seconds_per_request = 0.25

    def full(self) -> bool:
        return self.pending >= settings.OPSCONSOLE_OTLP_MAX_PENDING

    def retry_after(self) -> int:
        return max(1, math.ceil(self.pending * self.seconds_per_request))

    def took(self, seconds: float) -> None:
        self.seconds_per_request = 0.8 * self.seconds_per_request + 0.2 * seconds


backlog = _Backlog()


def _answer(
    kind: str, status: int, body: bytes, headers: dict[str, str] | None = None
) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type=kind)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _refusal(kind: str, status: int, message: str, retry_after: int | None = None) -> HttpResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="otlp"'
    if status == 405:
        headers["Allow"] = "POST"
    return _answer(kind, status, wire.status_body(kind, status, message), headers)


@csrf_exempt
async def traces(request: HttpRequest) -> HttpResponse:
    response = await _traces(request)
    REQUESTS.labels("traces", str(response.status_code)).inc()
    return response


async def _traces(request: HttpRequest) -> HttpResponse:
    kind = wire.media_type(request.headers.get("Content-Type", "")) or wire.JSON
    if request.method != "POST":
        return _refusal(kind, 405, "Export traces with POST.")
    if wire.media_type(request.headers.get("Content-Type", "")) is None:
        return _refusal(
            wire.JSON, 415, "Send application/x-protobuf or application/json (OTLP/HTTP)."
        )
    if backlog.full():
        return _refusal(
            kind, 503, "The console is busy ingesting; retry later.", backlog.retry_after()
        )
    backlog.pending += 1
    started = time.monotonic()
    try:
        return await sync_to_async(_export)(request, kind)
    finally:
        backlog.pending -= 1
        backlog.took(time.monotonic() - started)


def _export(request: HttpRequest, kind: str) -> HttpResponse:
    try:
        agent = _agent(request)
        throttle = TraceExportThrottle()
        if not throttle.allow_request(SimpleNamespace(user=agent), None):
            return _refusal(
                kind, 429, "Over this agent's rate of trace exports.", math.ceil(throttle.wait())
            )
        data = _body(request)
        decoded = wire.decode(data, kind)
        outcome = IngestOutcome(rejected=decoded.rejected, reasons=list(decoded.reasons))
        records = spans_decode(decoded.request, outcome)
        traces_ingest(agent=agent, records=records, outcome=outcome)
        SPANS.labels("accepted").inc(outcome.stored)
        SPANS.labels("rejected").inc(outcome.rejected)
        SPANS.labels("duplicate").inc(outcome.duplicates)
    except wire.WireError as error:
        return _refusal(kind, error.status, error.message)
    except DatabaseError as error:
        # Nothing was committed: the exporter retries the whole batch after Retry-After.
        logger.warning("OTLP batch not stored, the database is unavailable: %s", error)
        return _refusal(kind, 503, "The console cannot store spans right now; retry.", 2)
    if outcome.rejected:
        logger.info(
            "OTLP batch of %s: %d spans stored, %d rejected (%s)",
            agent.name,
            outcome.stored,
            outcome.rejected,
            "; ".join(outcome.reasons[:3]),
        )
    body = wire.success_body(kind, rejected=outcome.rejected, message=outcome.message())
    return _answer(kind, 200, body)


def _not_traces(signal: str, request: HttpRequest) -> HttpResponse:
    """Metrics or logs, which an exporter configured with ``OTEL_EXPORTER_OTLP_ENDPOINT`` sends
    here too: refused with a 404 that says what to do, in the request's encoding."""
    kind = wire.media_type(request.headers.get("Content-Type", "")) or wire.JSON
    if request.method != "POST":
        return _refusal(kind, 405, f"Export {signal} with POST (they are not received here).")
    try:
        _agent(request)
    except wire.WireError as error:
        return _refusal(kind, error.status, error.message)
    return _refusal(
        kind,
        404,
        f"This console receives OpenTelemetry traces only, at /v1/traces: {signal} are not "
        "received and this batch was dropped. To send traces alone, set "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=<console>/v1/traces instead of "
        "OTEL_EXPORTER_OTLP_ENDPOINT, or keep it and set OTEL_METRICS_EXPORTER=none and "
        "OTEL_LOGS_EXPORTER=none.",
    )


@csrf_exempt
def metrics(request: HttpRequest) -> HttpResponse:
    """``/v1/metrics``: not received (404, see the module docstring)."""
    response = _not_traces("metrics", request)
    REQUESTS.labels("metrics", str(response.status_code)).inc()
    return response


@csrf_exempt
def logs(request: HttpRequest) -> HttpResponse:
    """``/v1/logs``: not received (404, see the module docstring)."""
    response = _not_traces("logs", request)
    REQUESTS.labels("logs", str(response.status_code)).inc()
    return response


def _agent(request: HttpRequest) -> Any:
    header = request.headers.get("Authorization", "")
    if not header:
        raise wire.WireError(401, "Send an agent key: 'Authorization: Bearer aok_...'.")
    try:
        principal, _ = authenticate_bearer(header)
    except AuthenticationFailed as error:
        raise wire.WireError(401, str(error.detail)) from None
    if not is_agent(principal):
        raise wire.WireError(403, "Traces are sent with an agent key (aok_...), not a person's.")
    return principal


def _body(request: HttpRequest) -> bytes:
    """The body as sent, within the cap (refused before reading when it says it is larger),
    then decompressed within the decoded cap."""
    cap = settings.OPSCONSOLE_OTLP_MAX_BODY_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > cap:
        raise wire.WireError(413, f"The body is over {cap} bytes.")
    # request.read, not request.body: body enforces DATA_UPLOAD_MAX_MEMORY_SIZE, the API's cap.
    raw = request.read(cap + 1)
    if len(raw) > cap:
        raise wire.WireError(413, f"The body is over {cap} bytes.")
    return wire.decompress(
        raw,
        request.headers.get("Content-Encoding", ""),
        max_bytes=settings.OPSCONSOLE_OTLP_MAX_DECODED_BYTES,
    )
