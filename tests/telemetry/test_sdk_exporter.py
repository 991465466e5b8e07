"""A real span stream: the OpenTelemetry SDK and its OTLP/HTTP exporter, configured only by the
environment variables README.md documents, against a live console."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from agents.models import ObservedSpan, Run, RunStatus, ToolCall


def agent_run(tracer, number: int) -> None:
    """One agent-shaped run: an agent span around model calls and tool calls (dual-emitting
    GenAI and OpenInference attributes, as instrumentations do)."""
    with tracer.start_as_current_span("invoke_agent support-agent") as agent_span:
        agent_span.set_attribute("gen_ai.operation.name", "invoke_agent")
        agent_span.set_attribute("gen_ai.agent.name", "support-agent")
        agent_span.set_attribute("openinference.span.kind", "AGENT")
        agent_span.set_attribute("input.value", f"ticket {number}")
        for turn in range(2):
            with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                chat.set_attribute("gen_ai.usage.input_tokens", 100 + turn)
                chat.set_attribute("gen_ai.usage.output_tokens", 10)
                chat.set_attribute("openinference.span.kind", "LLM")
            with tracer.start_as_current_span("execute_tool kb.read") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("gen_ai.tool.name", "kb.read")
                tool.set_attribute("gen_ai.tool.call.arguments", f'{{"q": "{number}-{turn}"}}')
                if turn == 1:
                    tool.set_status(Status(StatusCode.ERROR, "kb unavailable"))


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_the_otel_sdk_exporter_sends_runs_the_console_stores(
    live_server, transactional_db, agent, monkeypatch, compression
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", live_server.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{agent.key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
    exporter = OTLPSpanExporter()
    results: list[SpanExportResult] = []
    export = exporter.export

    def recording(spans):
        results.append(export(spans))
        return results[-1]

    monkeypatch.setattr(exporter, "export", recording)
    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=8))
    tracer = provider.get_tracer("test")

    for number in range(3):
        agent_run(tracer, number)
    provider.force_flush()
    provider.shutdown()

    assert results and all(result == SpanExportResult.SUCCESS for result in results)
    assert len(results) >= 2  # 21 spans in batches of 8: runs split across requests
    runs = list(Run.objects.filter(agent=agent.agent, source="otlp").order_by("task"))
    assert [run.task for run in runs] == ["ticket 0", "ticket 1", "ticket 2"]
    assert ObservedSpan.objects.count() == 3 * 5
    for run in runs:
        assert run.status == RunStatus.SUCCEEDED
        assert (run.steps, run.tool_calls, run.tokens) == (2, 2, 100 + 101 + 20)
        assert run.metadata["otlp"]["service"] == "support-agent"
        failed = ToolCall.objects.get(run=run, result_ok=False)
        assert failed.error == "kb unavailable"
