"""OTLP/HTTP on the wire: media types, compression, size caps, decoding and the answers.

Pure functions over bytes and protobuf messages (no database, no Django request), so the
receiver (``api.py``) stays thin and every rule here is testable on its own. The rules are the
OTLP specification's (``opentelemetry-proto`` ``docs/specification.md``):

- ``application/x-protobuf`` and ``application/json`` (the OTLP JSON mapping: hex trace and span
  ids, lowerCamelCase keys, int64 as strings or numbers) on one path; the answer uses the
  request's encoding;
- ``Content-Encoding: gzip`` (and ``deflate``, ``identity``); the body is capped before and after
  decompression (413);
- a 400 only when nothing decodes; single bad spans are dropped and counted in
  ``partial_success``;
- errors carry a ``google.rpc.Status``.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MEDIA_TYPES = (PROTOBUF, JSON)

# gRPC status codes carried in google.rpc.Status, by HTTP status.
_GRPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    # gRPC's own HTTP mapping: a service the server does not implement (metrics, logs).
    404: code_pb2.UNIMPLEMENTED,
    405: code_pb2.UNIMPLEMENTED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}


class WireError(Exception):
    """A request refused as a whole: the HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def media_type(content_type: str) -> str | None:
    """``application/x-protobuf; charset=binary`` -> ``application/x-protobuf``; None when the
    type is not one OTLP/HTTP uses."""
    base = content_type.split(";", 1)[0].strip().lower()
    return base if base in MEDIA_TYPES else None


def decompress(body: bytes, content_encoding: str, *, max_bytes: int) -> bytes:
    """The body with its Content-Encoding undone, never more than ``max_bytes`` (413)."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(body) > max_bytes:
            raise WireError(413, f"The body is over {max_bytes} bytes.")
        return body
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=31)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise WireError(415, f"Content-Encoding {encoding!r} is not supported: use gzip.")
    try:
        # max_length bounds the output, so a small "zip bomb" cannot inflate without limit.
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise WireError(400, f"The body is not valid {encoding}: {exc}.") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise WireError(413, f"The body is over {max_bytes} bytes once decompressed.")
    if not inflater.eof:
        raise WireError(400, f"The {encoding} body is truncated.")
    return data


@dataclass
class Decoded:
    """A request decoded: its resource spans, and the spans the JSON decoder could not read."""

    request: ExportTraceServiceRequest
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)


def decode(data: bytes, kind: str) -> Decoded:
    """An ``ExportTraceServiceRequest`` from protobuf or OTLP JSON. Raises WireError(400) when
    nothing decodes; a JSON span that does not decode is counted as rejected."""
    if kind == PROTOBUF:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(data)
        except DecodeError as exc:
            raise WireError(
                400, f"The body is not an OTLP protobuf ExportTraceServiceRequest: {exc}."
            ) from None
        return Decoded(request)
    return _decode_json(data)


def _decode_json(data: bytes) -> Decoded:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise WireError(400, f"The body is not JSON: {exc}.") from None
    if not isinstance(document, dict):
        raise WireError(400, "The body is not an OTLP JSON ExportTraceServiceRequest (an object).")
    resources = document.get("resourceSpans", document.get("resource_spans", []))
    if not isinstance(resources, list):
        raise WireError(400, "resourceSpans must be a list.")
    decoded = Decoded(ExportTraceServiceRequest())
    for resource in resources:
        if not isinstance(resource, dict):
            raise WireError(400, "Each resourceSpans entry must be an object.")
        scopes = resource.pop("scopeSpans", resource.pop("scope_spans", [])) or []
        target = decoded.request.resource_spans.add()
        _parse_into(resource, target, "resourceSpans")
        if not isinstance(scopes, list):
            raise WireError(400, "scopeSpans must be a list.")
        for scope in scopes:
            if not isinstance(scope, dict):
                raise WireError(400, "Each scopeSpans entry must be an object.")
            spans = scope.pop("spans", []) or []
            scope_target = target.scope_spans.add()
            _parse_into(scope, scope_target, "scopeSpans")
            if not isinstance(spans, list):
                raise WireError(400, "spans must be a list.")
            for raw in spans:
                # One span at a time, so one bad span is rejected alone (partial success).
                span = Span()
                try:
                    if not isinstance(raw, dict):
                        raise ValueError("a span must be an object")
                    json_format.ParseDict(_hex_ids(raw), span, ignore_unknown_fields=True)
                except (json_format.ParseError, ValueError, TypeError) as exc:
                    decoded.rejected += 1
                    decoded.reasons.append(f"a span does not decode: {str(exc)[:200]}")
                    continue
                scope_target.spans.append(span)
    return decoded


def _parse_into(value: dict[str, Any], target: ResourceSpans | ScopeSpans, what: str) -> None:
    try:
        json_format.ParseDict(value, target, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise WireError(400, f"A {what} entry does not decode: {str(exc)[:300]}.") from None


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids(span: dict[str, Any]) -> dict[str, Any]:
    """OTLP JSON writes ids in hex where the protobuf JSON mapping reads base64: left alone,
    ``json_format`` would silently mis-decode a 32-digit hex trace id into 24 bytes."""
    span = dict(span)
    for key in _ID_FIELDS:
        if isinstance(span.get(key), str):
            span[key] = _hex_to_base64(span[key])
    links = span.get("links")
    if isinstance(links, list):
        span["links"] = [
            {
                k: _hex_to_base64(v) if k in _ID_FIELDS and isinstance(v, str) else v
                for k, v in link.items()
            }
            if isinstance(link, dict)
            else link
            for link in links
        ]
    return span


def _hex_to_base64(value: str) -> str:
    try:
        raw = binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise ValueError(f"id {value[:40]!r} is not hex") from None
    return base64.b64encode(raw).decode()


# --- answers ------------------------------------------------------------------------------------


def success_body(kind: str, *, rejected: int = 0, message: str = "") -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` only when something was rejected
    or there is a warning to pass on (the specification leaves it unset on full success)."""
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return _encode(response, kind)


def status_body(kind: str, status: int, message: str) -> bytes:
    """A ``google.rpc.Status`` for a refused request, in the request's encoding."""
    return _encode(
        status_pb2.Status(code=_GRPC_CODES.get(status, code_pb2.UNKNOWN), message=message), kind
    )


def _encode(message: Any, kind: str) -> bytes:
    if kind == PROTOBUF:
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode()
