"""Observed runs from OTLP traces: store a batch of spans as runs, model steps and tool calls.

One batch is one transaction (``traces_ingest``): the answer to the exporter is sent only after
it committed, so a 200 means the spans are stored and queryable. What an observed run is:

- one run per trace id of the agent whose key sent it (``Run.source = "otlp"``,
  ``Run.mode = "observe"``), created by the first span seen: children usually arrive before
  their root, and a root that never arrives still leaves one run, ended by
  ``observed_runs_finalize`` after ``OPSCONSOLE_OTLP_ROOT_WAIT_SECONDS`` without new spans;
- a span is stored once (``ObservedSpan``, unique per run and span id): a re-sent batch finds
  its spans stored and moves no counter;
- model spans are steps (tokens; cost from the client, else the policy's ``prices``), tool
  spans are tool calls (name, arguments, result, status), as ordinary trace rows, so every page
  (runs, run detail, monitoring, drift, top talkers) shows them;
- the root span ends the run with a stop reason derived from it; then the run is replayed
  against the policy in force with the gateway's own checks (``agents.monitoring.replay``):
  what enforcing would have done is kept in ``Run.would_stop_reason`` and
  ``ToolCall.would_decision``. Nothing is enforced on an observed run: no budget, no approval,
  no breaker (its results do not count towards the gateway's breakers: ``reported_at`` stays
  empty) and the reaper leaves it alone (it has no budgets).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any, TypeVar

from django.db import IntegrityError, connection, models, transaction
from django.db.models import NOT_PROVIDED
from django.db.models.base import ModelState
from django.utils import timezone

from agents import stop_reasons
from agents.models import (
    BIGINT_COLUMN_MAX,
    INT_COLUMN_MAX,
    USD_COLUMN_MAX,
    Agent,
    AgentMode,
    Decision,
    EventKind,
    ObservedSpan,
    Run,
    RunSource,
    RunStatus,
    ToolCall,
    TraceEvent,
)
from agents.monitoring.replay import ReplayResult, replay
from agents.policy.document import Policy, canonical_hash
from agents.policy.selectors import policy_current
from agents.runs.services import run_broadcast_many
from agents.telemetry.conventions import (
    AGENT,
    LLM,
    TOOL,
    SpanRecord,
    SpanRejected,
    attributes_of,
    span_record,
    step_limit_error,
)

logger = logging.getLogger("opsconsole.telemetry")

M = TypeVar("M", bound=models.Model)

MILLION = Decimal("1000000")
USD_PLACES = Decimal("0.000001")
MAX_REASONS = 5  # in partial_success's message


@dataclass
class IngestOutcome:
    """What became of one export request's spans."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    truncated: int = 0
    runs: int = 0

    def message(self) -> str:
        """partial_success's error_message: rejections first, then warnings."""
        parts = []
        if self.rejected:
            parts.append(
                f"{self.rejected} spans rejected: " + "; ".join(self.reasons[:MAX_REASONS])
            )
        if self.truncated:
            parts.append(f"{self.truncated} attribute values truncated to 32 KiB")
        return ". ".join(parts)


def spans_decode(request: Any, outcome: IngestOutcome) -> list[SpanRecord]:
    """The valid spans of an ``ExportTraceServiceRequest``; the others are counted as rejected."""
    records = []
    for resource_spans in request.resource_spans:
        resource, _ = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                try:
                    record = span_record(span)
                except SpanRejected as exc:
                    outcome.rejected += 1
                    outcome.reasons.append(str(exc))
                    continue
                except Exception:  # noqa: BLE001 - one odd span must not lose the batch
                    logger.exception("an OTLP span could not be mapped")
                    outcome.rejected += 1
                    outcome.reasons.append("a span could not be mapped")
                    continue
                record.resource = resource
                outcome.truncated += record.truncated
                records.append(record)
    return records


def traces_ingest(*, agent: Agent, records: list[SpanRecord], outcome: IngestOutcome) -> None:
    """Store the spans in one transaction (see the module docstring). A concurrent batch that
    created the same run or span first makes this one retry once, then it finds them."""
    if not records:
        return
    for attempt in (1, 2):
        try:
            _store(agent, records, outcome)
            return
        except IntegrityError:
            if attempt == 2:
                raise


def _store(agent: Agent, records: list[SpanRecord], outcome: IngestOutcome) -> None:
    policy = policy_current()
    now = timezone.now()
    unique: dict[tuple[str, str], SpanRecord] = {}
    for record in records:
        unique.setdefault((record.trace_id, record.span_id), record)
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for record in unique.values():
        by_trace[record.trace_id].append(record)
    trace_ids = sorted(by_trace)
    stored = 0
    duplicates = len(records) - len(unique)  # the same span twice in one request
    with transaction.atomic():
        known = set(
            Run.objects.filter(agent=agent, trace_id__in=trace_ids).values_list(
                "trace_id", flat=True
            )
        )
        fresh = [
            _new_run(agent, trace_id, by_trace[trace_id], policy, now)
            for trace_id in trace_ids
            if trace_id not in known
        ]
        if fresh:
            Run.objects.bulk_create(fresh, ignore_conflicts=True)
        # Locked in trace id order, so two batches of the same traces never deadlock.
        runs = {
            run.trace_id: run
            for run in Run.objects.select_for_update()
            .filter(agent=agent, trace_id__in=trace_ids)
            .order_by("trace_id")
        }
        for run in runs.values():
            run.agent = agent
        seen = set(
            ObservedSpan.objects.filter(
                run_id__in=[run.pk for run in runs.values()],
                span_id__in=[span_id for _, span_id in unique],
            ).values_list("run_id", "span_id")
        )
        spans: list[ObservedSpan] = []
        calls: list[tuple[Run, SpanRecord, ToolCall]] = []
        events: list[tuple[datetime, int, TraceEvent]] = []
        touched: list[Run] = []
        fresh_spans: dict[int, int] = {}
        starts = {run.pk: run.started_at for run in runs.values()}
        for trace_id in trace_ids:
            run = runs[trace_id]
            new = [r for r in by_trace[trace_id] if (run.pk, r.span_id) not in seen]
            duplicates += len(by_trace[trace_id]) - len(new)
            if not new:
                continue
            stored += len(new)
            touched.append(run)
            fresh_spans[run.pk] = len(new)
            _apply(run, new, policy, now, spans, calls, events)
        ended = [run for run in touched if not run.is_active]
        if ended:
            # Before the inserts: the verdicts go into the new tool calls' rows.
            _would_have(ended, policy, calls=calls, events=events, fresh_spans=fresh_spans)
        bulk_insert(ObservedSpan, spans)
        bulk_insert(ToolCall, [call for _, _, call in calls], with_ids=True)
        for run, record, call in calls:
            events.append((record.started_at, 1, _tool_call_event(run, call)))
            events.append((record.ended_at, 2, _tool_result_event(run, record, call)))
        first_span = {run.pk: run.started_at for run in touched}
        for _, _, event in events:
            if event.kind == EventKind.RUN_STARTED:  # a new run's start, at its earliest span
                event.at = first_span[event.run_id]
        earlier = [run for run in touched if run.metadata["otlp"]["spans"] > fresh_spans[run.pk]]
        _timeline_merge(earlier, starts, events)
        events.sort(key=lambda item: (item[2].run_id, _RANK.get(item[2].kind, 1), item[0], item[1]))
        bulk_insert(TraceEvent, [event for _, _, event in events])
        runs_save(touched)
        run_broadcast_many(touched)
    outcome.stored += stored
    outcome.duplicates += duplicates
    outcome.runs += len(touched)


# A timeline's order: the start first, the end last, the rest by time then by these orders
# (the orders _apply gives a batch's events, for events read back from the database).
_RANK: dict[str, int] = {EventKind.RUN_STARTED: 0, EventKind.FINISH: 2, EventKind.STOP: 2}
_ORDER: dict[str, int] = {
    EventKind.RUN_STARTED: 0,
    EventKind.TOOL_CALL: 1,
    EventKind.TOOL_RESULT: 2,
    EventKind.STEP: 3,
    EventKind.FINISH: 9,
    EventKind.STOP: 9,
}


def _timeline_merge(
    runs: list[Run],
    starts: dict[int, datetime],
    events: list[tuple[datetime, int, TraceEvent]],
) -> None:
    """Keep the timeline of runs that had spans before this batch in time order.

    A timeline is its events in id order (the run's page pages it by id; exports and replays
    read it so), but spans do not arrive in time order: exporters send a span when it ends, so
    children come before their root, and batches from several processes or retries come in any
    order. The stored events that fall at or after this batch's earliest event are taken out
    and written again with the batch's, in time order (``_store`` sorts them): the ids follow
    the spans' times whatever order the batches came in. Only that tail is rewritten, so a
    batch in order rewrites nothing. The start event moves to the run's earliest span.
    """
    earliest: dict[int, datetime] = {}
    ids = {run.pk for run in runs}
    for at, _, event in events:
        if event.run_id in ids and event.kind not in _RANK:
            earliest[event.run_id] = min(at, earliest.get(event.run_id, at))
    for run in runs:
        if run.started_at != starts[run.pk]:
            TraceEvent.objects.filter(run_id=run.pk, kind=EventKind.RUN_STARTED).update(
                at=run.started_at
            )
    if not earliest:
        return
    tail = models.Q()
    for run_id, at in earliest.items():
        tail |= models.Q(run_id=run_id, at__gte=at)
    moved = list(
        TraceEvent.objects.filter(tail).exclude(kind=EventKind.RUN_STARTED).order_by("run_id", "id")
    )
    if not moved:
        return
    TraceEvent.objects.filter(pk__in=[event.pk for event in moved]).delete()
    for event in moved:
        event.pk = None
        event._state.adding = True
        events.append((event.at, _ORDER.get(event.kind, 5), event))


_RUN_FIELDS = [
    "task",
    "agent_version",
    "metadata",
    "status",
    "stop_reason",
    "answer",
    "error",
    "steps",
    "tool_calls",
    "tokens",
    "usd",
    "started_at",
    "last_activity_at",
    "ended_at",
    "would_stop_reason",
    "would_stop_detail",
    "would_stop_at",
    "would_approvals",
    "would_approval_tool",
]


# Run columns an ingest changes, with their PostgreSQL types (runs_save).
_RUN_TYPES = {
    "task": "text",
    "agent_version": "text",
    "metadata": "jsonb",
    "status": "text",
    "stop_reason": "text",
    "answer": "text",
    "error": "text",
    "steps": "integer",
    "tool_calls": "integer",
    "tokens": "bigint",
    "usd": "numeric",
    "started_at": "timestamptz",
    "last_activity_at": "timestamptz",
    "ended_at": "timestamptz",
    "would_stop_reason": "text",
    "would_stop_detail": "text",
    "would_stop_at": "text",
    "would_approvals": "integer",
    "would_approval_tool": "text",
}


def runs_save(runs: list[Run]) -> None:
    """Write the runs' ingest fields: one UPDATE for them all on PostgreSQL."""
    if not runs:
        return
    if connection.vendor != "postgresql":
        for run in runs:
            Run.objects.filter(pk=run.pk).update(
                **{name: getattr(run, name) for name in _RUN_FIELDS}
            )
        return
    fields = {field.attname: field for field in Run._meta.concrete_fields}
    assignments = ", ".join(
        f"{fields[name].column} = v.{name}::{kind}" for name, kind in _RUN_TYPES.items()
    )
    arrays = ", ".join(
        f"%s::{'text' if kind == 'jsonb' else kind}[]" for kind in _RUN_TYPES.values()
    )
    values = [[run.pk for run in runs]] + [
        [_json(getattr(run, name)) if kind == "jsonb" else getattr(run, name) for run in runs]
        for name, kind in _RUN_TYPES.items()
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Run._meta.db_table} AS r SET {assignments} "
            f"FROM unnest(%s::bigint[], {arrays}) AS v(id, {', '.join(_RUN_TYPES)}) "
            "WHERE r.id = v.id",
            values,
        )


def bulk_insert(model: type[models.Model], objects: list[Any], *, with_ids: bool = False) -> None:
    """Insert many rows in one statement. On PostgreSQL with COPY: Django's bulk_create binds
    every value in Python (client-side binding), which cost more than everything else an
    ingest does; ``with_ids`` takes the ids from the table's sequence first, so the objects
    have their primary keys as bulk_create would set them."""
    if not objects:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(objects)
        return
    meta = model._meta
    if with_ids:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                [meta.db_table, meta.pk.column, len(objects)],
            )
            for obj, (pk,) in zip(objects, cursor.fetchall(), strict=True):
                obj.pk = pk
    fields = [
        field
        for field in meta.concrete_fields
        if (with_ids or not field.primary_key) and field.db_default is NOT_PROVIDED
    ]
    json_fields = {field.attname for field in fields if isinstance(field, models.JSONField)}
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    names = [field.attname for field in fields]
    sql = f"COPY {meta.db_table} ({columns}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for obj in objects:
            copy.write_row(
                [
                    _json(getattr(obj, name)) if name in json_fields else getattr(obj, name)
                    for name in names
                ]
            )


@cache
def _defaults(model: type[models.Model]) -> tuple[tuple[str, Any], ...]:
    # Field._get_default: the field's default as a callable (Django caches it per field).
    fields = model._meta.concrete_fields
    return tuple((field.attname, field._get_default) for field in fields)  # type: ignore[attr-defined]


def _row(model: type[M], **values: Any) -> M:
    """An unsaved row without Model.__init__ (its per-field work was the largest CPU cost of
    an ingest): the fields' defaults, then ``values`` by attribute name (``run_id``)."""
    row = model.__new__(model)
    row._state = ModelState()
    row.__dict__.update({name: default() for name, default in _defaults(model)}, **values)
    return row


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _new_run(
    agent: Agent, trace_id: str, records: list[SpanRecord], policy: Policy, now: datetime
) -> Run:
    resource = records[0].resource
    started = min(min(r.started_at for r in records), now)
    return Run(
        agent=agent,
        trace_id=trace_id,
        source=RunSource.OTLP,
        mode=AgentMode.OBSERVE,
        task=f"trace {trace_id} (its root span has not arrived yet)",
        agent_version=str(resource.get("service.version") or "")[:100],
        policy_version=policy.version,
        started_at=started,
        last_activity_at=now,
        metadata={
            "otlp": {
                "trace_id": trace_id,
                "service": str(resource.get("service.name") or "")[:200],
                "environment": str(
                    resource.get("deployment.environment.name")
                    or resource.get("deployment.environment")
                    or ""
                )[:200],
                "spans": 0,
                "root": False,
            }
        },
    )


def _step_usd(record: SpanRecord, policy: Policy) -> tuple[Decimal, str]:
    """What a model call cost: the client's figure, else the policy's price table."""
    if record.usd is not None:
        return min(record.usd, USD_COLUMN_MAX).quantize(USD_PLACES, ROUND_HALF_UP), "client"
    price = policy.price_for(record.model)
    if price is None:
        return Decimal("0"), "unpriced"
    usd = (record.tokens_in * price[0] + record.tokens_out * price[1]) / MILLION
    return min(usd, USD_COLUMN_MAX).quantize(USD_PLACES, ROUND_HALF_UP), "prices"


def _apply(
    run: Run,
    records: list[SpanRecord],
    policy: Policy,
    now: datetime,
    spans: list[ObservedSpan],
    calls: list[tuple[Run, SpanRecord, ToolCall]],
    events: list[tuple[datetime, int, TraceEvent]],
) -> None:
    """Add a trace's new spans to its (locked) run: rows to insert, counters to move."""
    otlp = run.metadata.setdefault("otlp", {})
    if not otlp.get("spans"):
        events.append((run.started_at, 0, _started_event(run)))
    otlp["spans"] = otlp.get("spans", 0) + len(records)
    run.started_at = min(run.started_at, *(r.started_at for r in records))
    run.last_activity_at = now
    root: SpanRecord | None = None
    for record in sorted(records, key=lambda r: (r.started_at, r.span_id)):
        spans.append(
            _row(
                ObservedSpan,
                run_id=run.pk,
                span_id=record.span_id,
                parent_span_id=record.parent_span_id,
                name=record.name,
                kind=record.kind,
                started_at=record.started_at,
                ended_at=record.ended_at,
                status=record.status,
                status_message=record.status_message,
                attributes=record.attributes,
                events=record.events,
            )
        )
        if record.is_root:
            root = record
        if record.kind == LLM:
            usd, source = _step_usd(record, policy)
            run.steps = min(run.steps + 1, INT_COLUMN_MAX)
            run.tokens = min(run.tokens + record.tokens_in + record.tokens_out, BIGINT_COLUMN_MAX)
            run.usd = min(run.usd + usd, USD_COLUMN_MAX)
            events.append((record.ended_at, 3, _step_event(run, record, usd, source)))
        elif record.kind == TOOL:
            cost = policy.tool_rule(record.tool).cost_usd
            run.tool_calls = min(run.tool_calls + 1, INT_COLUMN_MAX)
            run.usd = min(run.usd + cost, USD_COLUMN_MAX)
            calls.append((run, record, _tool_call(run, record, cost)))
        if record.kind == AGENT or record.is_root:
            # The agent's own version wins over the service's (resource service.version).
            run.agent_version = record.agent_version or run.agent_version
            if record.agent_name:
                otlp.setdefault("agent_name", record.agent_name)
            if record.conversation_id:
                otlp.setdefault("conversation_id", record.conversation_id)
            if not otlp.get("root") and (record.is_root or not otlp.get("task_from_agent")):
                run.task = record.input_text or record.name
                otlp["task_from_agent"] = True
    if root is not None:
        _end(run, root, events)


def _end(run: Run, root: SpanRecord, events: list[tuple[datetime, int, TraceEvent]]) -> None:
    """The root span arrived: the run ends as the root says (SPEC.md's closed vocabulary)."""
    otlp = run.metadata["otlp"]
    otlp["root"] = True
    otlp.pop("incomplete", None)
    run.task = root.input_text or root.name
    run.started_at = root.started_at
    reason, detail = derived_stop(root)
    run.stop_reason = reason
    run.status = {
        stop_reasons.OK: RunStatus.SUCCEEDED,
        stop_reasons.ERROR: RunStatus.FAILED,
    }.get(reason, RunStatus.STOPPED)
    run.ended_at = max(min(root.ended_at, timezone.now()), run.started_at)
    run.answer = root.output_text[:4000]
    run.error = root.error_text[:4000] if not root.ok else ""
    kind = EventKind.STOP if run.status == RunStatus.STOPPED else EventKind.FINISH
    data: dict[str, Any] = {
        "status": run.status,
        "stop_reason": reason,
        "detail": detail,
        "answer": run.answer[:4000],
        "error": run.error,
        "span_id": root.span_id,
    }
    event = _row(TraceEvent, run_id=run.pk, kind=kind, at=run.ended_at, data=data)
    events.append((run.ended_at, 9, event))


def derived_stop(root: SpanRecord) -> tuple[str, str]:
    """The run's stop reason from its root span (no OTel convention has one): our attribute
    ``opsconsole.run.stop_reason`` when valid; an error status is ``error``, or ``max_steps``
    when the framework ran out of turns; otherwise ``ok``."""
    if root.stop_reason and stop_reasons.is_valid(root.stop_reason):
        return root.stop_reason, "as the agent's root span says (opsconsole.run.stop_reason)"
    if not root.ok:
        detail = f"the root span ended with an error: {root.error_text or 'no message'}"
        if step_limit_error(f"{root.error_type} {root.status_message}"):
            return stop_reasons.MAX_STEPS, detail
        return stop_reasons.ERROR, detail
    return stop_reasons.OK, "the root span ended without an error"


def _started_event(run: Run) -> TraceEvent:
    return _row(
        TraceEvent,
        run_id=run.pk,
        kind=EventKind.RUN_STARTED,
        at=run.started_at,
        data={
            "task": run.task,
            "agent_version": run.agent_version,
            "budgets": run.budgets(),
            "requested": {},
            "policy_version": run.policy_version,
            "source": RunSource.OTLP,
            "trace_id": run.trace_id,
        },
    )


def _step_event(run: Run, record: SpanRecord, usd: Decimal, source: str) -> TraceEvent:
    return _row(
        TraceEvent,
        run_id=run.pk,
        kind=EventKind.STEP,
        at=record.ended_at,
        data={
            "kind": "llm",
            "model": record.model,
            "provider": record.provider,
            "tokens_in": record.tokens_in,
            "tokens_out": record.tokens_out,
            "usd": str(usd),
            "usd_source": source,
            "latency_ms": record.latency_ms,
            "summary": record.output_text[:300],
            "finish_reasons": record.finish_reasons,
            "counted": True,
            "span_id": record.span_id,
        },
    )


def _tool_call(run: Run, record: SpanRecord, cost: Decimal) -> ToolCall:
    return _row(
        ToolCall,
        run_id=run.pk,
        tool=record.tool,
        args=record.tool_args,
        args_hash=canonical_hash(record.tool_args),
        decision=Decision.ALLOW,
        detail="observed (OTLP): not decided by the gateway",
        counted=True,
        cost_usd=cost,
        created_at=record.started_at,
        result_ok=record.ok,
        output=record.tool_output,
        error=record.error_text if not record.ok else "",
        latency_ms=min(record.latency_ms, INT_COLUMN_MAX),
        valid=True,
    )


def _tool_call_event(run: Run, call: ToolCall) -> TraceEvent:
    return _row(
        TraceEvent,
        run_id=run.pk,
        kind=EventKind.TOOL_CALL,
        at=call.created_at,
        tool_call_id=call.pk,
        data={
            "tool_call_id": call.pk,
            "tool": call.tool,
            "args": call.args,
            "decision": call.decision,
            "stop_reason": "",
            "detail": call.detail,
            "cost_usd": str(call.cost_usd),
            # What enforcing would have answered (set when the run had ended by this batch).
            "would_decision": call.would_decision,
            "would_stop_reason": call.would_stop_reason,
        },
    )


def _tool_result_event(run: Run, record: SpanRecord, call: ToolCall) -> TraceEvent:
    return _row(
        TraceEvent,
        run_id=run.pk,
        kind=EventKind.TOOL_RESULT,
        at=record.ended_at,
        tool_call_id=call.pk,
        data={
            "tool_call_id": call.pk,
            "tool": call.tool,
            "ok": record.ok,
            "valid": True,
            "errors": [],
            "error": call.error,
            "latency_ms": call.latency_ms,
            "usd": "0",
            "output": call.output,
            "span_id": record.span_id,
        },
    )


# --- what enforcing would have done -------------------------------------------------------------


def _would_have(
    runs: list[Run],
    policy: Policy,
    *,
    calls: list[tuple[Run, SpanRecord, ToolCall]] | None = None,
    events: list[tuple[datetime, int, TraceEvent]] | None = None,
    fresh_spans: dict[int, int] | None = None,
) -> None:
    """Replay each ended run against ``policy`` with the gateway's checks; keep the verdicts on
    the run (its first would-have stop, the approvals it would have waited for) and on each of
    its tool calls. ``calls`` and ``events`` are this batch's, not stored yet (their verdicts
    are set on the objects); a run that had spans before this batch (``fresh_spans`` counts the
    new ones) reads its earlier steps and calls: two reads, and updates of those calls."""
    recorded: dict[int, list[dict[str, Any]]] = defaultdict(list)
    starts = {run.pk: run.started_at for run in runs}
    new_calls: dict[int, ToolCall] = {}
    for index, (run, _record, call) in enumerate(calls or []):
        if run.pk in starts:
            key = -(index + 1)  # not stored yet: a key of its own
            new_calls[key] = call
            recorded[run.pk].extend(_call_recording(call, key, starts[run.pk]))
    for _, _, event in events or []:
        if event.kind == EventKind.STEP and event.run_id in starts:
            data = event.data
            recorded[event.run_id].append(
                _step_recording(
                    event.at,
                    starts[event.run_id],
                    data["tokens_in"],
                    data["tokens_out"],
                    data["usd"],
                )
            )
    older = [
        run.pk
        for run in runs
        if fresh_spans is None or run.metadata["otlp"]["spans"] > fresh_spans.get(run.pk, 0)
    ]
    if older:
        steps = TraceEvent.objects.filter(run_id__in=older, kind=EventKind.STEP).values_list(
            "run_id", "at", "data__tokens_in", "data__tokens_out", "data__usd"
        )
        for run_id, at, tokens_in, tokens_out, usd in steps:
            recorded[run_id].append(_step_recording(at, starts[run_id], tokens_in, tokens_out, usd))
        for call in ToolCall.objects.filter(run_id__in=older).only(
            "pk", "run_id", "tool", "args", "created_at", "result_ok", "output", "latency_ms"
        ):
            recorded[call.run_id].extend(_call_recording(call, call.pk, starts[call.run_id]))
    stored: dict[tuple[str, str], list[int]] = defaultdict(list)
    for run in runs:
        trace = sorted(recorded[run.pk], key=lambda e: (e["offset"], e["order"]))
        assert run.ended_at is not None
        trace.append(
            {
                "kind": EventKind.FINISH,
                "offset": (run.ended_at - run.started_at).total_seconds(),
                "order": 9,
                "stop_reason": run.stop_reason,
            }
        )
        recording = {
            "run": run.pk,
            "agent": run.agent.name,
            "agent_version": run.agent_version,
            "policy_version": run.policy_version,
            "stop_reason": run.stop_reason,
            "requested": {},
            "events": trace,
        }
        result = replay(recording, policy)
        _keep_verdict(run, result)
        for decision in result.tool_calls:
            key = decision.tool_call_id or 0
            if key in new_calls:
                new_calls[key].would_decision = decision.new_decision
                new_calls[key].would_stop_reason = decision.new_stop_reason
            else:
                stored[(decision.new_decision, decision.new_stop_reason)].append(key)
    for (would_decision, reason), call_ids in stored.items():
        ToolCall.objects.filter(pk__in=call_ids).update(
            would_decision=would_decision, would_stop_reason=reason
        )


def _step_recording(
    at: datetime, start: datetime, tokens_in: Any, tokens_out: Any, usd: Any
) -> dict[str, Any]:
    return {
        "kind": EventKind.STEP,
        "offset": (at - start).total_seconds(),
        "order": 0,
        "tokens": int(tokens_in or 0) + int(tokens_out or 0),
        "usd": str(usd or "0"),
        "counted": True,
    }


def _call_recording(call: ToolCall, key: int, start: datetime) -> list[dict[str, Any]]:
    """A tool call and its result as a replay reads them (agents/monitoring/replay.py)."""
    offset = (call.created_at - start).total_seconds()
    return [
        {
            "kind": EventKind.TOOL_CALL,
            "offset": offset,
            "order": 1,
            "tool_call": key,
            "tool": call.tool,
            "args": call.args,
            "decision": Decision.ALLOW,
            "stop_reason": "",
            "final_stop_reason": "",
        },
        {
            "kind": EventKind.TOOL_RESULT,
            "offset": offset + (call.latency_ms or 0) / 1000,
            "order": 2,
            "tool_call": key,
            "tool": call.tool,
            "ok": bool(call.result_ok),
            "valid": True,
            "errors": [],
            "output": call.output,
            "usd": "0",
        },
    ]


def _keep_verdict(run: Run, result: ReplayResult) -> None:
    run.would_stop_reason = run.would_stop_detail = run.would_stop_at = ""
    run.would_approval_tool = ""
    waits = [d for d in result.tool_calls if d.new_decision == Decision.PENDING_APPROVAL]
    run.would_approvals = len(waits)
    if waits:
        run.would_approval_tool = waits[0].tool
    reason = result.new_stop_reason
    if reason is None or reason in (stop_reasons.OK, stop_reasons.ERROR, run.stop_reason):
        return
    run.would_stop_reason = reason
    stopped = next((d for d in result.decisions if d.new_decision == Decision.STOP), None)
    invalid = next((d for d in result.tool_calls if d.new_valid is False), None)
    if stopped is not None and stopped.new_stop_reason == reason:
        where = f"{'call' if stopped.kind == 'tool_call' else 'step'} {stopped.index}"
        what = f" ({stopped.tool})" if stopped.tool else ""
    elif invalid is not None:
        where, what = f"result of call {invalid.index}", f" ({invalid.tool})"
    else:
        where, what = "finish", ""
    run.would_stop_at = where
    run.would_stop_detail = (
        f"enforcing policy v{result.policy_version} would have stopped this run at "
        f"{where}{what} with {reason}"
    )


# --- runs whose root never arrives --------------------------------------------------------------


def observed_runs_finalize(*, quiet_seconds: int, batch: int = 200) -> int:
    """End observed runs still waiting for their root span after ``quiet_seconds`` without a
    new span: they keep what arrived, say so, and are judged like the others."""
    cutoff = timezone.now() - timedelta(seconds=quiet_seconds)
    ids = list(
        Run.objects.filter(
            source=RunSource.OTLP, status=RunStatus.RUNNING, last_activity_at__lt=cutoff
        ).values_list("pk", flat=True)[:batch]
    )
    if not ids:
        return 0
    policy = policy_current()
    with transaction.atomic():
        runs = list(
            Run.objects.select_for_update(of=("self",))
            .select_related("agent")
            .filter(pk__in=ids, status=RunStatus.RUNNING, last_activity_at__lt=cutoff)
            .order_by("trace_id")
        )
        if not runs:
            return 0
        last = {
            run_id: (ended_at, status, message)
            for run_id, ended_at, status, message in ObservedSpan.objects.filter(
                run_id__in=[run.pk for run in runs]
            )
            .order_by("run_id", "ended_at")
            .values_list("run_id", "ended_at", "status", "status_message")
        }
        events = []
        for run in runs:
            ended_at, status, message = last.get(run.pk, (run.last_activity_at, "unset", ""))
            failed = status == "error"
            run.stop_reason = stop_reasons.ERROR if failed else stop_reasons.OK
            run.status = RunStatus.FAILED if failed else RunStatus.SUCCEEDED
            run.ended_at = max(ended_at, run.started_at)
            run.error = message[:4000] if failed else ""
            run.metadata.setdefault("otlp", {})["incomplete"] = True
            detail = (
                f"the root span never arrived: ended after {quiet_seconds} s without a new span, "
                f"as its last span ended ({'with an error' if failed else 'without an error'})"
            )
            events.append(
                TraceEvent(
                    run=run,
                    kind=EventKind.FINISH,
                    at=run.ended_at,
                    data={
                        "status": run.status,
                        "stop_reason": run.stop_reason,
                        "detail": detail,
                        "error": run.error,
                        "incomplete": True,
                    },
                )
            )
        bulk_insert(TraceEvent, events)
        _would_have(runs, policy)
        runs_save(runs)
        run_broadcast_many(runs)
    return len(runs)


def observed_spans_purge(*, older_than_days: int, batch: int = 5000) -> int:
    """Remove the spans (their attributes: prompts, arguments, outputs) of runs that ended more
    than ``older_than_days`` ago, as ``traces.purge`` does for trace events; the runs, their
    counters and verdicts stay."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    removed = 0
    while True:
        ids = list(
            ObservedSpan.objects.filter(
                run__in=Run.objects.filter(source=RunSource.OTLP, ended_at__lt=cutoff)
            ).values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return removed
        removed += ObservedSpan.objects.filter(pk__in=ids).delete()[0]
