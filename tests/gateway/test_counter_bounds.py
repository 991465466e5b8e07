"""Every usage counter of a run is bounded by what its column holds, on SQLite and PostgreSQL.

A report that would push a counter past its column's capacity stops the run with the matching
budget reason (the capacity is a ceiling under every budget), so nothing too large is ever
stored and no later read of the run can fail (issue 12, item 1).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client

from agents.gateway import services
from agents.gateway.tasks import reap_runs
from agents.models import (
    BIGINT_COLUMN_MAX,
    INT_COLUMN_MAX,
    USD_COLUMN_MAX,
    Run,
    ToolCall,
)

pytestmark = pytest.mark.django_db

USD_MAX = "999999.999999"


def step(agent, run_id, **body):
    response = agent.api.post_json(f"/api/v1/runs/{run_id}/steps", body)
    assert response.status_code == 200, response.content
    return response.json()


def test_the_capacities_are_the_columns(db):
    """The constants are what the columns of the run and its tool calls hold."""
    run = Run._meta
    assert run.get_field("steps").get_internal_type() == "PositiveIntegerField"
    assert run.get_field("tool_calls").get_internal_type() == "PositiveIntegerField"
    assert run.get_field("tokens").get_internal_type() == "PositiveBigIntegerField"
    for field in (
        run.get_field("usd"),
        run.get_field("max_usd"),
        ToolCall._meta.get_field("cost_usd"),
        ToolCall._meta.get_field("result_usd"),
    ):
        assert (field.max_digits, field.decimal_places) == (12, 6), field
    assert INT_COLUMN_MAX == 2**31 - 1
    assert BIGINT_COLUMN_MAX == 2**63 - 1
    assert Decimal(USD_MAX) == USD_COLUMN_MAX


def test_two_maximal_steps_stop_the_run_with_max_usd_and_every_page_still_reads_it(
    agent, start_run, oncall
):
    run = start_run()  # the seed policy sets no max_usd
    assert run["budgets"]["max_usd"] is None

    first = step(agent, run["id"], usd=USD_MAX)
    assert first["decision"] == "continue"
    second = step(agent, run["id"], usd=USD_MAX)

    assert (second["decision"], second["stop_reason"]) == ("stop", "max_usd")
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason) == ("stopped", "max_usd")
    assert db_run.usd == Decimal(USD_MAX)  # the first step counted, the second refused
    assert db_run.steps == 1

    # The run and everything that lists it still read.
    assert agent.api.get(f"/api/v1/runs/{run['id']}").status_code == 200
    console = Client()
    console.force_login(oncall.user)
    for path in ("/", "/runs/", f"/runs/{run['id']}/"):
        assert console.get(path).status_code == 200, path


def test_a_step_at_the_cap_still_counts_and_the_next_cent_stops(agent, start_run):
    run = start_run()
    step(agent, run["id"], usd="999999.999998")
    assert step(agent, run["id"], usd="0.000001")["decision"] == "continue"
    assert Run.objects.get(pk=run["id"]).usd == USD_COLUMN_MAX
    assert step(agent, run["id"], usd="0.000001")["stop_reason"] == "max_usd"


def test_a_tool_result_that_would_overflow_stops_with_max_usd(agent, start_run):
    run = start_run()
    step(agent, run["id"], usd=USD_MAX)
    allowed = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": "x"}}
    ).json()
    assert allowed["decision"] == "allow"

    answer = agent.api.post_json(
        f"/api/v1/tool-calls/{allowed['id']}/result", {"ok": True, "output": {}, "usd": "1"}
    )

    assert answer.status_code == 200, answer.content
    assert answer.json()["stop_reason"] == "max_usd"
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.stop_reason, db_run.usd) == ("max_usd", USD_COLUMN_MAX)


def test_a_tool_whose_cost_would_overflow_stops_the_call_with_max_usd(
    agent, start_run, publish_policy
):
    publish_policy(
        {
            "tools": {
                "allow": ["kb.read", "gold.get"],
                "definitions": {"gold.get": {"cost_usd": 600000}},
            }
        }
    )
    run = start_run()
    first = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "gold.get", "args": {"n": 1}}
    ).json()
    assert first["decision"] == "allow"

    second = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "gold.get", "args": {"n": 2}}
    )

    assert second.status_code == 200, second.content
    assert (second.json()["decision"], second.json()["stop_reason"]) == ("stop", "max_usd")
    assert Run.objects.get(pk=run["id"]).usd == Decimal("600000")


def test_the_integer_counters_stop_at_their_columns(agent, start_run):
    """steps and tool_calls at INT_MAX, tokens at BIGINT_MAX: the next report stops the run."""
    run = start_run(budgets={"max_steps": None, "max_tool_calls": None})
    Run.objects.filter(pk=run["id"]).update(steps=INT_COLUMN_MAX, max_steps=None)
    assert step(agent, run["id"])["stop_reason"] == "max_steps"

    run = start_run()
    Run.objects.filter(pk=run["id"]).update(tool_calls=INT_COLUMN_MAX, max_tool_calls=None)
    call = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    ).json()
    assert call["stop_reason"] == "max_tool_calls"

    run = start_run()
    Run.objects.filter(pk=run["id"]).update(tokens=BIGINT_COLUMN_MAX - 10)
    assert step(agent, run["id"], tokens_in=11)["stop_reason"] == "max_tokens"
    assert Run.objects.get(pk=run["id"]).tokens == BIGINT_COLUMN_MAX - 10


def test_policy_ceilings_larger_than_the_columns_are_capped_at_them(
    agent, start_run, publish_policy
):
    """A ceiling of 10^12 steps means "no practical limit", not a run that cannot be saved."""
    publish_policy(
        {
            "tools": {"allow": ["kb.read"]},
            "budgets": {
                "max_steps": 10**12,
                "max_seconds": 10**12,
                "max_tool_calls": 10**12,
                "max_usd": 10**12,
                "max_tokens": 10**30,
            },
        }
    )
    run = start_run()

    db_run = Run.objects.get(pk=run["id"])
    assert db_run.max_steps == INT_COLUMN_MAX
    assert db_run.max_seconds == INT_COLUMN_MAX
    assert db_run.max_tool_calls == INT_COLUMN_MAX
    assert db_run.max_usd == USD_COLUMN_MAX
    assert db_run.max_tokens == BIGINT_COLUMN_MAX


def test_the_service_refuses_to_count_past_the_column_too(agent, start_run):
    """The bound is in the decision, not only in the API's input checks."""
    run = start_run()
    services.step_record(agent=agent.agent, run_id=run["id"], usd=USD_COLUMN_MAX)
    outcome = services.step_record(agent=agent.agent, run_id=run["id"], usd=Decimal("0.5"))
    assert outcome.stop_reason == "max_usd"


@pytest.mark.skipif(connection.vendor != "sqlite", reason="only SQLite stores the overflow")
def test_the_migration_clamps_an_overflowed_total_already_stored(agent, start_run, oncall):
    """Runs stored before the bound held (SQLite kept 1999999.999998) read again after it."""
    import importlib

    run = start_run()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE agents_run SET usd = '1999999.999998' WHERE id = %s", [run["id"]])
    with pytest.raises(Exception):  # noqa: B017, PT011 - what made every page a 500
        Run.objects.get(pk=run["id"])

    migration = importlib.import_module("agents.migrations.0009_run_waiting_time_counter_bounds")
    with connection.cursor() as cursor:
        for statement in migration.CLAMP_OVERFLOWED_COUNTERS:
            cursor.execute(statement)

    assert Run.objects.get(pk=run["id"]).usd == USD_COLUMN_MAX
    assert reap_runs.delay().get() == 0
