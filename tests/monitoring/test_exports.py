"""Exports: runs and traces as JSON Lines and CSV, from the command and the console."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command

from agents.gateway import services
from agents.models import Run, TraceEvent
from agents.monitoring.exports import CSV_COLUMNS
from tests.conftest import make_agent


@pytest.fixture
def runs(agent, db):
    """Two runs of support-bot (one old) and one of other-bot."""
    bot = agent.agent
    old, _ = services.run_start(agent=bot, task="=cmd|' /C calc'!A0", agent_version="v1")
    services.step_record(agent=bot, run_id=old.pk, tokens_in=10, tokens_out=5)
    services.run_finish(agent=bot, run_id=old.pk, status="succeeded")
    Run.objects.filter(pk=old.pk).update(started_at=datetime(2026, 1, 1, tzinfo=UTC))
    new, _ = services.run_start(agent=bot, task="look up", agent_version="v2")
    services.tool_call_decide(agent=bot, run_id=new.pk, tool="search.read", args={"q": "x"})
    other = make_agent("other-bot")
    third, _ = services.run_start(agent=other.agent, task="elsewhere")
    return {"old": old, "new": new, "other": third}


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.django_db
def test_the_command_writes_one_json_line_per_run_with_its_trace(runs):
    out = io.StringIO()

    call_command("export_runs", "--format", "jsonl", stdout=out)

    records = jsonl(out.getvalue())
    assert [r["id"] for r in records] == [runs["other"].pk, runs["new"].pk, runs["old"].pk]
    newest_bot = records[1]
    assert newest_bot["agent"] == "support-bot" and newest_bot["agent_version"] == "v2"
    assert [e["kind"] for e in newest_bot["trace"]] == ["run_started", "tool_call"]
    assert newest_bot["trace"][1]["data"]["tool"] == "search.read"
    assert newest_bot["usage"]["tool_calls"] == 1
    assert records[2]["stop_reason"] == "ok"


@pytest.mark.django_db
def test_the_command_filters_by_agent_and_since_and_writes_a_file(runs, tmp_path):
    target = tmp_path / "runs.jsonl"

    call_command(
        "export_runs", "--agent", "support-bot", "--since", "2026-02-01", "--output", str(target)
    )

    assert [r["id"] for r in jsonl(target.read_text())] == [runs["new"].pk]


@pytest.mark.django_db
def test_csv_has_one_row_per_trace_event_and_quotes_formulas(runs):
    out = io.StringIO()

    call_command("export_runs", "--format", "csv", "--agent", "support-bot", stdout=out)

    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0].keys()) == CSV_COLUMNS
    by_run = {}
    for row in rows:
        by_run.setdefault(int(row["run_id"]), []).append(row["event_kind"])
    assert by_run[runs["new"].pk] == ["run_started", "tool_call"]
    assert by_run[runs["old"].pk] == ["run_started", "step", "finish"]
    old_rows = [row for row in rows if int(row["run_id"]) == runs["old"].pk]
    assert old_rows[0]["task"].startswith("'=")  # a spreadsheet will not run it
    assert old_rows[1]["tokens"] == "15"


@pytest.mark.django_db
def test_a_run_whose_trace_was_purged_still_has_its_row(runs):
    TraceEvent.objects.filter(run=runs["old"]).delete()
    out = io.StringIO()

    call_command("export_runs", "--format", "csv", "--agent", "support-bot", stdout=out)

    rows = [
        r for r in csv.DictReader(io.StringIO(out.getvalue())) if int(r["run_id"]) == runs["old"].pk
    ]
    assert len(rows) == 1 and rows[0]["event_id"] == ""


@pytest.mark.django_db
def test_a_bad_filter_is_an_error(runs):
    with pytest.raises(CommandError):
        call_command("export_runs", "--since", "yesterday-ish")


@pytest.mark.django_db
def test_exports_stream_across_keyset_pages(runs):
    from agents.monitoring.exports import runs_export

    chunks = list(runs_export(format="jsonl", filters={}, batch=1))

    assert len(chunks) == 3
    assert [json.loads(chunk)["id"] for chunk in chunks] == [
        runs["other"].pk,
        runs["new"].pk,
        runs["old"].pk,
    ]


@pytest.mark.django_db
def test_the_console_streams_an_export_with_the_runs_list_filters(runs, oncall, client):
    client.force_login(oncall.user)

    response = client.get("/monitoring/export?format=jsonl&agent=support-bot&status=stopped")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Content-Disposition"].startswith('attachment; filename="runs-')
    body = b"".join(response.streaming_content).decode()
    assert jsonl(body) == []  # no support-bot run was stopped

    response = client.get("/monitoring/export?format=csv&agent=support-bot&status=succeeded")
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert {int(r["run_id"]) for r in rows} == {runs["old"].pk}


@pytest.mark.django_db
def test_the_console_export_needs_a_role_and_refuses_bad_input(runs, outsider, oncall, client):
    assert client.get("/monitoring/export").status_code == 302  # to the login page
    client.force_login(outsider.user)
    assert client.get("/monitoring/export").status_code == 403
    client.force_login(oncall.user)
    assert client.get("/monitoring/export?format=xml").status_code == 400
    assert client.get("/monitoring/export?since=not-a-date").status_code == 400
    assert client.post("/monitoring/export").status_code == 405
