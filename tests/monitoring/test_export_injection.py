"""A CSV export opened in a spreadsheet runs nothing an agent wrote: every cell that starts like a
formula (= + - @ tab, carriage return; OWASP's list) is quoted with a leading ' whatever column
it is in."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.management import call_command

from agents.gateway import services
from agents.monitoring.exports import runs_export
from tests.conftest import make_agent

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture
def hostile_run(agent, db):
    """A run where the agent chose every word it could: version, task, tool names, stop details."""
    bot = agent.agent
    run, _ = services.run_start(agent=bot, task="+1+cmd|' /C calc'!A0", agent_version="@SUM(1)")
    services.step_record(agent=bot, run_id=run.pk, model="=model", summary="-2+3")
    services.tool_call_decide(agent=bot, run_id=run.pk, tool='=HYPERLINK("http://x")', args={})
    return run


def export_rows(**filters) -> list[list[str]]:
    text = "".join(runs_export(format="csv", filters=filters))
    return list(csv.reader(io.StringIO(text)))


def formula_cells(rows: list[list[str]]) -> list[tuple[str, str]]:
    header, *body = rows
    return [
        (column, cell)
        for row in body
        for column, cell in zip(header, row, strict=True)
        if cell.startswith(FORMULA_STARTS)
    ]


@pytest.mark.django_db
def test_no_cell_an_agent_wrote_starts_like_a_formula(hostile_run):
    rows = export_rows()

    assert len(rows) > 2
    assert formula_cells(rows) == []
    cells = {cell for row in rows for cell in row}
    assert '\'=HYPERLINK("http://x")' in cells  # the tool column, kept readable
    assert "'+1+cmd|' /C calc'!A0" in cells
    assert "'@SUM(1)" in cells


@pytest.mark.django_db
def test_a_denied_tool_named_like_a_formula_is_quoted_in_every_column(agent, db):
    bot = agent.agent
    run, _ = services.run_start(agent=bot, task="look up")
    services.tool_call_decide(agent=bot, run_id=run.pk, tool="-delete-everything", args={})

    rows = export_rows()

    assert formula_cells(rows) == []
    assert any(cell == "'-delete-everything" for row in rows for cell in row)


@pytest.mark.django_db
def test_an_agent_named_like_a_formula_is_quoted(db):
    minus = make_agent("-1-bot")
    services.run_start(agent=minus.agent, task="\tTAB first")
    services.run_start(agent=minus.agent, task="\rCR first")
    out = io.StringIO()

    call_command("export_runs", "--format", "csv", stdout=out)

    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert formula_cells(rows) == []
    assert any(cell == "'-1-bot" for row in rows for cell in row)
