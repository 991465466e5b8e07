"""Posting golden OTLP fixtures (tests/telemetry/fixtures/, written by build.py there)."""

from __future__ import annotations

from pathlib import Path

from django.test import Client
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def content_type_of(name: str) -> str:
    return JSON if ".json" in name else PROTOBUF


def export(
    key: str | None,
    name: str | None = None,
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    encoding: str | None = None,
    authorization: str | None = None,
):
    """POST /v1/traces as an OTLP/HTTP exporter does: the fixture's encoding, gzip if .gz."""
    data = body if body is not None else fixture(name or "")
    content_type = content_type or content_type_of(name or ".pb")
    # Set in META too: the test client leaves an empty body without a Content-Type.
    extra = {"CONTENT_TYPE": content_type}
    if key:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    if authorization:
        extra["HTTP_AUTHORIZATION"] = authorization
    if encoding or (name and name.endswith(".gz")):
        extra["HTTP_CONTENT_ENCODING"] = encoding or "gzip"
    base = content_type.split(";")[0]  # the client would re-encode the body by its charset
    return Client().post("/v1/traces", data, content_type=base, **extra)


def answer(response) -> ExportTraceServiceResponse:
    """The success answer, decoded in the encoding the response says it is in."""
    message = ExportTraceServiceResponse()
    if response["Content-Type"].startswith(JSON):
        json_format.Parse(response.content, message)
    else:
        message.ParseFromString(response.content)
    return message


def status(response) -> status_pb2.Status:
    message = status_pb2.Status()
    if response["Content-Type"].startswith(JSON):
        json_format.Parse(response.content, message)
    else:
        message.ParseFromString(response.content)
    return message
