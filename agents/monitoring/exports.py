"""Runs and their traces as JSON Lines or CSV, streamed.

The filters are the runs list's own (``runs_selectors.run_page`` keyword arguments: agent, status,
stop_reason, since, until, search), so an export holds exactly the runs the list shows. Runs
are read in keyset pages of ``batch`` (newest first, on the list's index) and each page's trace
events with one ``iterator()`` query, so memory stays flat however many runs match.

- ``jsonl``: one line per run: the run's fields and its ``trace`` (every event in order).
- ``csv``: one row per trace event, the run's columns repeated; a run whose trace was purged
  still has one row, with the event columns empty.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from agents.models import Run, TraceEvent
from agents.runs import selectors as runs_selectors

FORMATS = ("jsonl", "csv")
CONTENT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_COLUMNS = [
    "run_id",
    "agent",
    "agent_version",
    "task",
    "status",
    "stop_reason",
    "policy_version",
    "started_at",
    "ended_at",
    "steps",
    "tool_calls",
    "tokens",
    "usd",
    "event_id",
    "event_kind",
    "event_at",
    "tool",
    "decision",
    "event_stop_reason",
    "event_data",
]


def runs_export(*, format: str, filters: dict[str, Any], batch: int = 500) -> Iterator[str]:
    """Yield the export in chunks of text (see the module docstring)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    if format == "csv":
        yield _csv_line(CSV_COLUMNS)
    cursor = None
    while True:
        runs, cursor = runs_selectors.run_page(**filters, after=cursor, limit=batch)
        if not runs:
            return
        ids = [run.pk for run in runs]
        metadata = dict(Run.objects.filter(pk__in=ids).values_list("pk", "metadata"))
        events: dict[int, list[TraceEvent]] = defaultdict(list)
        for event in TraceEvent.objects.filter(run_id__in=ids).order_by("id").iterator(2000):
            events[event.run_id].append(event)
        chunk = []
        for run in runs:
            if format == "jsonl":
                chunk.append(_jsonl_line(run, metadata.get(run.pk), events[run.pk]))
            else:
                chunk.extend(_csv_rows(run, events[run.pk]))
        yield "".join(chunk)
        if cursor is None:
            return


def _run_fields(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "agent": run.agent.name,
        "agent_version": run.agent_version,
        "task": run.task,
        "status": run.status,
        "stop_reason": run.stop_reason,
        "policy_version": run.policy_version,
        "budgets": run.budgets(),
        "usage": run.usage(),
        "started_at": run.started_at.isoformat(),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
    }


def _jsonl_line(run: Run, metadata: Any, events: list[TraceEvent]) -> str:
    record = _run_fields(run)
    record["metadata"] = metadata
    record["trace"] = [
        {
            "id": event.pk,
            "kind": event.kind,
            "at": event.at.isoformat(),
            "tool_call": event.tool_call_id,
            "data": event.data,
        }
        for event in events
    ]
    return json.dumps(record, default=str, separators=(",", ":")) + "\n"


def _csv_line(values: list[Any]) -> str:
    """One CSV row, every text cell through ``_text_cell``: agents reach more columns than the
    task (tool names, versions, stop reasons naming a tool, agent names an admin chose), and
    which ones grows with the trace, so no column is trusted."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_text_cell(v) if isinstance(v, str) else v for v in values])
    return buffer.getvalue()


# What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(value: str) -> str:
    """Text that a spreadsheet would run as a formula is quoted with a '."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def _csv_rows(run: Run, events: list[TraceEvent]) -> list[str]:
    usage = run.usage()
    head = [
        run.pk,
        run.agent.name,
        run.agent_version,
        run.task,
        run.status,
        run.stop_reason,
        run.policy_version,
        run.started_at.isoformat(),
        run.ended_at.isoformat() if run.ended_at else "",
        usage["steps"],
        usage["tool_calls"],
        usage["tokens"],
        usage["usd"],
    ]
    if not events:
        return [_csv_line(head + [""] * 7)]
    return [
        _csv_line(
            head
            + [
                event.pk,
                event.kind,
                event.at.isoformat(),
                event.data.get("tool", ""),
                event.data.get("decision", ""),
                event.data.get("stop_reason", ""),
                json.dumps(event.data, default=str, separators=(",", ":")),
            ]
        )
        for event in events
    ]
