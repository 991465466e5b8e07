"""POST /v1/traces speaks OTLP/HTTP: encodings, compression, caps, partial success, auth,
back-pressure; a 200 only once the spans are stored."""

from __future__ import annotations

import gzip

import pytest
from django.db import OperationalError
from django.test import Client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from agents.models import ObservedSpan, Run, ToolCall
from agents.telemetry import api
from tests.telemetry.conftest import JSON, PROTOBUF, answer, export, fixture, status

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "name", ["genai_latest.pb", "genai_latest.json", "genai_latest.pb.gz", "genai_latest.json.gz"]
)
def test_it_stores_a_batch_in_each_encoding_and_answers_in_that_encoding(agent, name):
    response = export(agent.key, name)

    assert response.status_code == 200
    expected = JSON if ".json" in name else PROTOBUF
    assert response["Content-Type"] == expected
    assert not answer(response).HasField("partial_success")
    run = Run.objects.get(trace_id="00000000000000000000000000000001")
    assert run.agent == agent.agent
    assert run.source == "otlp"
    assert ObservedSpan.objects.filter(run=run).count() == 5
    assert ToolCall.objects.filter(run=run).count() == 2


@pytest.mark.parametrize("name", ["empty.pb", "empty.json"])
def test_an_empty_request_succeeds_and_stores_nothing(agent, name):
    response = export(agent.key, name)

    assert response.status_code == 200
    assert not answer(response).HasField("partial_success")
    assert not Run.objects.exists()


def test_an_undecodable_body_is_a_400_with_a_status_in_the_request_encoding(agent):
    response = export(agent.key, "undecodable.pb")

    assert response.status_code == 400
    assert response["Content-Type"] == PROTOBUF
    assert "not an OTLP protobuf" in status(response).message
    assert not Run.objects.exists()


def test_json_that_is_not_an_export_request_is_a_400(agent):
    response = export(agent.key, body=b"[1, 2]", content_type=JSON)

    assert response.status_code == 400
    assert response["Content-Type"] == JSON
    assert status(response).code == 3  # INVALID_ARGUMENT


def test_a_mixed_batch_stores_the_good_spans_and_counts_the_bad_ones(agent):
    response = export(agent.key, "mixed.json")

    assert response.status_code == 200
    partial = answer(response).partial_success
    assert partial.rejected_spans == 3
    assert "3 spans rejected" in partial.error_message
    assert "trace_id must be 16 bytes" in partial.error_message
    assert "ends before it starts" in partial.error_message
    assert ObservedSpan.objects.count() == 2


def test_a_duplicate_batch_counts_once(agent):
    first = export(agent.key, "genai_latest.pb")
    run = Run.objects.get()
    counters = (run.steps, run.tool_calls, run.tokens, run.usd)

    again = export(agent.key, "genai_latest.json")  # the same spans, re-sent in JSON

    assert first.status_code == again.status_code == 200
    run.refresh_from_db()
    assert (run.steps, run.tool_calls, run.tokens, run.usd) == counters
    assert ObservedSpan.objects.count() == 5
    assert ToolCall.objects.count() == 2
    assert run.events.count() == 1 + 2 + 2 * 2 + 1  # started, 2 steps, 2 calls + results, finish


def test_gzip_past_the_decoded_cap_is_a_413(agent, settings):
    settings.OPSCONSOLE_OTLP_MAX_DECODED_BYTES = 1000
    bomb = gzip.compress(b"\x00" * 100_000)

    response = export(agent.key, body=bomb, encoding="gzip")

    assert response.status_code == 413
    assert "decompressed" in status(response).message
    assert not Run.objects.exists()


def test_a_body_past_the_cap_as_sent_is_a_413(agent, settings):
    settings.OPSCONSOLE_OTLP_MAX_BODY_BYTES = 100

    response = export(agent.key, "genai_latest.pb")

    assert response.status_code == 413
    assert not Run.objects.exists()


def test_other_media_types_and_encodings_are_a_415(agent):
    assert export(agent.key, "genai_latest.pb", content_type="text/plain").status_code == 415
    zstd = export(agent.key, "genai_latest.pb", encoding="zstd")
    assert zstd.status_code == 415
    assert not Run.objects.exists()


def test_media_type_parameters_are_ignored(agent):
    response = export(agent.key, "genai_latest.pb", content_type=f"{PROTOBUF}; charset=binary")

    assert response.status_code == 200


def test_it_needs_an_agent_key(agent, oncall):
    assert export(None, "genai_latest.pb").status_code == 401
    assert export("aok_not-a-key", "genai_latest.pb").status_code == 401
    assert export(oncall.token, "genai_latest.pb").status_code == 403
    assert not Run.objects.exists()


def test_the_header_form_of_the_exporters_environment_variable_authenticates(agent):
    # OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20aok_..." arrives URL-decoded.
    response = export(None, "genai_latest.pb", authorization=f"Bearer {agent.key}")

    assert response.status_code == 200


def test_only_post(agent, client):
    response = client.get("/v1/traces", HTTP_AUTHORIZATION=f"Bearer {agent.key}")

    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_an_unreachable_database_is_a_503_with_retry_after_and_nothing_half_stored(
    agent, monkeypatch
):
    def down(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(api, "traces_ingest", down)

    response = export(agent.key, "genai_latest.pb")

    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert status(response).code == 14  # UNAVAILABLE
    assert not Run.objects.exists()


def test_a_full_backlog_is_a_503_with_a_retry_after_from_the_drain_time(agent, monkeypatch):
    monkeypatch.setattr(api.backlog, "pending", 8)
    monkeypatch.setattr(api.backlog, "seconds_per_request", 0.5)

    response = export(agent.key, "genai_latest.pb")

    assert response.status_code == 503
    assert response["Retry-After"] == "4"
    assert not Run.objects.exists()


def test_over_the_agents_rate_is_a_429_with_retry_after(agent, settings, rate_clock):
    settings.OPSCONSOLE_RATE_LIMITS = {**settings.OPSCONSOLE_RATE_LIMITS, "otlp": "1/min"}

    assert export(agent.key, "genai_legacy.pb").status_code == 200
    response = export(agent.key, "genai_latest.pb")

    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert Run.objects.count() == 1


def test_the_fixture_files_are_what_their_names_say():
    assert fixture("genai_latest.pb.gz")[:2] == b"\x1f\x8b"
    assert fixture("genai_latest.json").startswith(b"{")


async def _through_body_limit(path: str, declared: int) -> int:
    """The status the ASGI body cap (opsconsole/limits.py) lets a request reach, or its 413."""
    from opsconsole.limits import RequestBodyLimit

    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "path": path,
        "headers": [(b"content-length", str(declared).encode())],
    }
    await RequestBodyLimit(app)(scope, receive, send)
    return sent[0]["status"]


async def test_trace_batches_have_their_own_body_cap_above_the_apis(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_048_576
    settings.OPSCONSOLE_BODY_LIMITS = {"/v1/traces": 32 * 1024 * 1024}
    three_mib = 3 * 1024 * 1024

    assert await _through_body_limit("/v1/traces", three_mib) == 200
    assert await _through_body_limit("/api/v1/runs", three_mib) == 413
    assert await _through_body_limit("/v1/traces", 33 * 1024 * 1024) == 413


# --- the other signals: /v1/metrics and /v1/logs ------------------------------------------------


def post_signal(path: str, key: str | None, content_type: str):
    extra = {"CONTENT_TYPE": content_type}
    if key:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return Client().post(path, b"\x0a\x00", content_type=content_type, **extra)


@pytest.mark.parametrize("signal", ["metrics", "logs"])
@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_metrics_and_logs_are_a_404_that_says_to_send_traces_alone(agent, signal, content_type):
    response = post_signal(f"/v1/{signal}", agent.key, content_type)

    assert response.status_code == 404  # not retryable: the exporter drops the batch
    assert response["Content-Type"] == content_type
    refusal = status(response)  # a google.rpc.Status in the request's encoding
    assert refusal.code == 12  # UNIMPLEMENTED
    assert "traces only, at /v1/traces" in refusal.message
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in refusal.message
    assert f"OTEL_{signal.upper()}_EXPORTER=none" in refusal.message
    assert not Run.objects.exists()


@pytest.mark.parametrize("signal", ["metrics", "logs"])
def test_metrics_and_logs_need_an_agent_key_as_traces_do(agent, oncall, signal):
    assert post_signal(f"/v1/{signal}", None, PROTOBUF).status_code == 401
    assert post_signal(f"/v1/{signal}", "aok_not-a-key", PROTOBUF).status_code == 401
    assert post_signal(f"/v1/{signal}", oncall.token, JSON).status_code == 403


# --- counted in /metrics --------------------------------------------------------------------------


def otlp_counts(client) -> dict[tuple[str, ...], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    counts = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for item in family.samples:
            if item.name == "opsconsole_otlp_spans_total":
                counts[("spans", item.labels["outcome"])] = item.value
            elif item.name == "opsconsole_otlp_requests_total":
                counts[("requests", item.labels["signal"], item.labels["code"])] = item.value
    return counts


def test_accepted_rejected_and_duplicate_spans_are_counted_in_metrics(agent, client):
    before = otlp_counts(client)

    export(agent.key, "mixed.json")  # 2 spans stored, 3 rejected
    export(agent.key, "genai_latest.pb")  # 5 stored
    export(agent.key, "genai_latest.json")  # the same 5 again: duplicates
    export(None, "genai_latest.pb")  # refused as a whole: no span counted
    post_signal("/v1/logs", agent.key, PROTOBUF)

    after = otlp_counts(client)

    def delta(*key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta("spans", "accepted") == 7
    assert delta("spans", "rejected") == 3
    assert delta("spans", "duplicate") == 5
    assert delta("requests", "traces", "200") == 3
    assert delta("requests", "traces", "401") == 1
    assert delta("requests", "logs", "404") == 1


def test_the_same_span_twice_in_one_request_is_one_accepted_and_one_duplicate(agent, client):
    request = ExportTraceServiceRequest()
    request.ParseFromString(fixture("genai_legacy.pb"))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans.append(spans[0])
    before = otlp_counts(client)

    response = export(agent.key, body=request.SerializeToString(), content_type=PROTOBUF)

    after = otlp_counts(client)
    assert response.status_code == 200
    accepted = after[("spans", "accepted")] - before.get(("spans", "accepted"), 0)
    assert accepted == ObservedSpan.objects.count() == len(spans) - 1
    assert after[("spans", "duplicate")] - before.get(("spans", "duplicate"), 0) == 1
