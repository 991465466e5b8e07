"""From OpenTelemetry spans to the console's vocabulary: runs, model steps and tool calls.

Four attribute vocabularies are read (``../shared/research/otlp.md``, section 1), in this order
for each field, and a value the client set is never overwritten by a derived one:

- the OpenTelemetry GenAI conventions, latest (``gen_ai.provider.name``,
  ``gen_ai.usage.input_tokens``, ``gen_ai.tool.call.arguments``) and legacy (``gen_ai.system``,
  ``gen_ai.usage.prompt_tokens``: what instrumentations emit by default);
- OpenInference (``openinference.span.kind``, ``llm.token_count.prompt``, ``tool.name``,
  ``input.value``/``output.value``): Phoenix, the OpenAI Agents SDK, LangChain/LangGraph, LlamaIndex;
- OpenLLMetry/Traceloop (``traceloop.span.kind``, ``traceloop.entity.name``,
  ``traceloop.entity.input``/``output``, ``llm.usage.*``).

Pure functions over protobuf spans; no database.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# Limits per span: values past these are cut with a marker, never a reason to refuse the span.
MAX_ATTRIBUTE_CHARS = 32 * 1024
MAX_ATTRIBUTES = 1024  # more than this on one span: the span is refused
MAX_NAME = 300
MAX_TOOL_NAME = 128  # agents.policy.document.MAX_TOOL_NAME: a stop reason holds the name
TRUNCATED = "…[truncated]"

# Our own attribute: an SDK (or a person) may say how the run ended, in the closed vocabulary.
STOP_REASON_ATTRIBUTE = "opsconsole.run.stop_reason"

LLM, TOOL, AGENT, WORKFLOW, RETRIEVAL, EMBEDDING, OTHER = (
    "llm",
    "tool",
    "agent",
    "workflow",
    "retrieval",
    "embedding",
    "other",
)

_GENAI_OPERATIONS = {
    "chat": LLM,
    "text_completion": LLM,
    "generate_content": LLM,
    "completion": LLM,
    "generate": LLM,
    "execute_tool": TOOL,
    "invoke_agent": AGENT,
    "create_agent": AGENT,
    "invoke_workflow": WORKFLOW,
    "embeddings": EMBEDDING,
    "retrieval": RETRIEVAL,
}
_OPENINFERENCE_KINDS = {
    "LLM": LLM,
    "TOOL": TOOL,
    "AGENT": AGENT,
    "CHAIN": WORKFLOW,
    "RETRIEVER": RETRIEVAL,
    "EMBEDDING": EMBEDDING,
}
_TRACELOOP_KINDS = {"workflow": WORKFLOW, "agent": AGENT, "tool": TOOL, "task": OTHER}
_TRACELOOP_REQUEST_TYPES = {"chat": LLM, "completion": LLM, "embedding": EMBEDDING}

# Framework exceptions that mean "the agent ran out of turns": a step budget of its own.
_STEP_LIMIT_ERRORS = ("MaxTurnsExceeded", "GraphRecursionError", "max_iterations", "MaxIterations")

_NUL = re.compile("[\x00\ud800-\udfff]")


class SpanRejected(ValueError):
    """This span cannot be stored (an id, its times, its size); the message says why."""


@dataclass
class SpanRecord:
    """One span, validated and mapped. Ids are lowercase hex; times are UTC."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    started_at: datetime
    ended_at: datetime
    status: str  # unset, ok, error
    status_message: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    truncated: int = 0
    # model steps
    model: str = ""
    provider: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    usd: Decimal | None = None  # what the client said the call cost
    finish_reasons: list[str] = field(default_factory=list)
    # tool calls
    tool: str = ""
    tool_call_id: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)
    tool_output: Any = None
    # the run
    agent_name: str = ""
    agent_version: str = ""
    conversation_id: str = ""
    error_type: str = ""
    input_text: str = ""
    output_text: str = ""
    stop_reason: str = ""  # STOP_REASON_ATTRIBUTE, unchecked
    resource: dict[str, Any] = field(default_factory=dict)  # shared by the spans of a resource

    @property
    def is_root(self) -> bool:
        return not self.parent_span_id

    @property
    def ok(self) -> bool:
        return self.status != "error"

    @property
    def latency_ms(self) -> int:
        return max(0, int((self.ended_at - self.started_at).total_seconds() * 1000))

    @property
    def error_text(self) -> str:
        return self.status_message or self.error_type


# --- attribute values ---------------------------------------------------------------------------


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as JSON: arrays and key-value lists in full, bytes as hex."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return _clean(value.string_value)
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        number = value.double_value
        return number if number == number and abs(number) != float("inf") else str(number)
    if which == "bool_value":
        return value.bool_value
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {_clean(item.key): any_value(item.value) for item in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return None


def _clean(text: str) -> str:
    # U+0000 (and lone surrogates) cannot be stored in PostgreSQL text or jsonb.
    return _NUL.sub("\ufffd", text) if "\x00" in text or _has_surrogate(text) else text


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _NUL.search(text) is not None


def attributes_of(key_values: Any) -> tuple[dict[str, Any], int]:
    """Attributes as a dict, long strings cut (returns how many were cut)."""
    result: dict[str, Any] = {}
    cut = 0
    for item in key_values:
        value = any_value(item.value)
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_CHARS:
            value = value[:MAX_ATTRIBUTE_CHARS] + TRUNCATED
            cut += 1
        elif isinstance(value, list | dict):
            size = len(json.dumps(value, default=str))
            if size > MAX_ATTRIBUTE_CHARS:
                value = json.dumps(value, default=str)[:MAX_ATTRIBUTE_CHARS] + TRUNCATED
                cut += 1
        result[_clean(item.key)] = value
    return result, cut


# --- one span -----------------------------------------------------------------------------------


def _first(attributes: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None and value != "":
            return value
    return None


def _int(value: Any) -> int:
    # int64 in OTLP JSON arrives as a string ({"intValue": "25"}); json_format reads it, but an
    # attribute set as a string ("25") by a hand-rolled exporter is read too.
    try:
        return max(0, int(value)) if value is not None and value != "" else 0
    except (TypeError, ValueError):
        try:
            return max(0, int(float(value)))
        except (TypeError, ValueError):
            return 0


def _usd(value: Any) -> Decimal | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


def _text(value: Any, limit: int = 2000) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value, default=str)
    return value[:limit]


def _json_or_text(value: Any) -> Any:
    """A JSON string parsed (tool arguments and results are often sent so), else as given."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _hex(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size:
        raise SpanRejected(f"{what} must be {size} bytes, not {len(raw)}")
    if not any(raw):
        raise SpanRejected(f"{what} is all zeros")
    return raw.hex()


def _time(nanos: int) -> datetime:
    return datetime.fromtimestamp(nanos / 1e9, tz=UTC)


def span_kind(attributes: dict[str, Any]) -> str:
    """llm, tool, agent, workflow, retrieval, embedding or other (GenAI, then OpenInference,
    then Traceloop, then what the attributes imply)."""
    operation = attributes.get("gen_ai.operation.name")
    if operation in _GENAI_OPERATIONS:
        return _GENAI_OPERATIONS[operation]
    openinference = attributes.get("openinference.span.kind")
    if isinstance(openinference, str) and openinference.upper() in _OPENINFERENCE_KINDS:
        return _OPENINFERENCE_KINDS[openinference.upper()]
    traceloop = attributes.get("traceloop.span.kind")
    if traceloop in _TRACELOOP_KINDS:
        return _TRACELOOP_KINDS[traceloop]
    request_type = attributes.get("llm.request.type")
    if request_type in _TRACELOOP_REQUEST_TYPES:
        return _TRACELOOP_REQUEST_TYPES[request_type]
    if "gen_ai.tool.name" in attributes or "gen_ai.tool.call.id" in attributes:
        return TOOL
    if _first(attributes, "gen_ai.request.model", "llm.model_name", "llm.request.model"):
        return LLM
    return OTHER


def span_record(span: Span) -> SpanRecord:
    """Validate and map one span. Raises SpanRejected."""
    trace_id = _hex(span.trace_id, 16, "trace_id")
    span_id = _hex(span.span_id, 8, "span_id")
    parent = span.parent_span_id
    if parent and len(parent) != 8:
        raise SpanRejected(f"parent_span_id must be empty or 8 bytes, not {len(parent)}")
    # An all-zero parent is no parent: the span is a root (an empty buffer too).
    parent_span_id = parent.hex() if parent and any(parent) else ""
    if not span.name:
        raise SpanRejected("the span has no name")
    if span.start_time_unix_nano == 0:
        raise SpanRejected("the span has no start time")
    end = span.end_time_unix_nano or span.start_time_unix_nano
    if end < span.start_time_unix_nano:
        raise SpanRejected("the span ends before it starts")
    if len(span.attributes) > MAX_ATTRIBUTES:
        raise SpanRejected(f"the span has more than {MAX_ATTRIBUTES} attributes")
    attributes, cut = attributes_of(span.attributes)
    events = []
    for event in span.events[:32]:
        event_attributes, event_cut = attributes_of(event.attributes)
        cut += event_cut
        events.append(
            {
                "name": _clean(event.name)[:MAX_NAME],
                "at": _time(event.time_unix_nano).isoformat() if event.time_unix_nano else None,
                "attributes": event_attributes,
            }
        )
    status = {
        Status.STATUS_CODE_ERROR: "error",
        Status.STATUS_CODE_OK: "ok",
    }.get(span.status.code, "unset")
    name = _clean(span.name)
    record = SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id,
        name=name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…",
        kind=span_kind(attributes),
        started_at=_time(span.start_time_unix_nano),
        ended_at=_time(end),
        status=status,
        status_message=_clean(span.status.message)[:2000],
        attributes=attributes,
        events=events,
        truncated=cut,
    )
    _map(record, attributes, events)
    return record


def _map(record: SpanRecord, a: dict[str, Any], events: list[dict[str, Any]]) -> None:
    record.agent_name = _text(
        _first(a, "gen_ai.agent.name", "agent.name", "graph.node.name")
        or (a.get("traceloop.entity.name") if record.kind in (AGENT, WORKFLOW) else None)
        or a.get("traceloop.workflow.name")
        or (record.name.partition(" ")[2] if record.name.startswith("invoke_agent ") else ""),
        200,
    )
    record.agent_version = _text(_first(a, "gen_ai.agent.version", "traceloop.entity.version"), 100)
    record.conversation_id = _text(
        _first(
            a,
            "gen_ai.conversation.id",
            "session.id",
            "traceloop.association.properties.session_id",
            "langfuse.session.id",
        ),
        200,
    )
    exception = next((e for e in events if e["name"] == "exception"), None)
    record.error_type = _text(
        a.get("error.type") or (exception["attributes"].get("exception.type") if exception else ""),
        200,
    )
    if not record.status_message and exception and record.status == "error":
        record.status_message = _text(exception["attributes"].get("exception.message"), 2000)
    record.stop_reason = _text(a.get(STOP_REASON_ATTRIBUTE), 200)
    record.input_text = _text(
        _first(
            a,
            "input.value",
            "gen_ai.input.messages",
            "traceloop.entity.input",
            "gen_ai.prompt.0.content",
            "llm.input_messages.0.message.content",
        )
    )
    record.output_text = _text(
        _first(
            a,
            "output.value",
            "gen_ai.output.messages",
            "traceloop.entity.output",
            "gen_ai.completion.0.content",
            "llm.output_messages.0.message.content",
        )
    )
    if record.kind == LLM:
        record.model = _text(
            _first(
                a,
                "gen_ai.response.model",
                "gen_ai.request.model",
                "llm.response.model",
                "llm.model_name",
                "llm.request.model",
            ),
            200,
        )
        record.provider = _text(
            _first(a, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"), 100
        )
        record.tokens_in = _int(
            _first(
                a,
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.prompt_tokens",
                "llm.token_count.prompt",
                "llm.usage.prompt_tokens",
            )
        )
        record.tokens_out = _int(
            _first(
                a,
                "gen_ai.usage.output_tokens",
                "gen_ai.usage.completion_tokens",
                "llm.token_count.completion",
                "llm.usage.completion_tokens",
            )
        )
        if not record.tokens_in and not record.tokens_out:
            record.tokens_in = _int(_first(a, "llm.token_count.total", "llm.usage.total_tokens"))
        record.usd = _usd(
            _first(a, "gen_ai.usage.cost.amount", "gen_ai.usage.cost", "llm.cost.total")
        )
        if record.usd is None:
            parts = [
                _usd(_first(a, "gen_ai.usage.input_cost", "llm.cost.prompt")),
                _usd(_first(a, "gen_ai.usage.output_cost", "llm.cost.completion")),
            ]
            if any(part is not None for part in parts):
                record.usd = sum((part or Decimal("0") for part in parts), Decimal("0"))
        reasons = a.get("gen_ai.response.finish_reasons")
        if isinstance(reasons, str):
            reasons = [reasons]
        if not reasons and a.get("gen_ai.completion.0.finish_reason"):
            reasons = [a["gen_ai.completion.0.finish_reason"]]
        record.finish_reasons = [str(reason)[:50] for reason in reasons or []][:10]
    elif record.kind == TOOL:
        name = _first(a, "gen_ai.tool.name", "tool.name") or (
            a.get("traceloop.entity.name") if a.get("traceloop.span.kind") == "tool" else None
        )
        if not name and record.name.startswith("execute_tool "):
            name = record.name.partition(" ")[2]
        record.tool = _text(name or record.name, MAX_TOOL_NAME).strip() or "unnamed"
        record.tool_call_id = _text(
            _first(a, "gen_ai.tool.call.id", "tool.id", "tool_call.id"), 200
        )
        arguments = _json_or_text(
            _first(a, "gen_ai.tool.call.arguments", "input.value", "traceloop.entity.input")
        )
        if arguments is None:
            arguments = {}
        record.tool_args = arguments if isinstance(arguments, dict) else {"input": arguments}
        record.tool_output = _json_or_text(
            _first(a, "gen_ai.tool.call.result", "output.value", "traceloop.entity.output")
        )


def step_limit_error(error_type: str) -> bool:
    """A framework's "out of turns" exception (OpenAI Agents' MaxTurnsExceeded, LangGraph's
    GraphRecursionError): the run hit a step limit of its own."""
    return any(marker in error_type for marker in _STEP_LIMIT_ERRORS)
