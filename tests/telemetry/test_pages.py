"""Observed runs are ordinary runs: the runs list (with a badge and a filter), the run's page,
monitoring's rollups and the overview's top talkers all show them."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agents.models import MetricRollup, Run
from agents.monitoring.rollups import rollups_compute
from agents.runs.selectors import load_ranking
from tests.conftest import logged_in
from tests.telemetry.conftest import export, fixture

pytestmark = pytest.mark.django_db


def fresh(name: str) -> bytes:
    """A fixture's spans moved to end just now (the fixtures' times are fixed in the past)."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(fixture(name))
    spans = [s for r in request.resource_spans for sc in r.scope_spans for s in sc.spans]
    shift = time.time_ns() - max(s.end_time_unix_nano for s in spans)
    for span in spans:
        span.start_time_unix_nano += shift
        span.end_time_unix_nano += shift
    return request.SerializeToString()


@pytest.fixture
def gateway_run(agent):
    response = agent.api.post_json("/api/v1/runs", {"task": "a gateway run"})
    assert response.status_code == 201
    return Run.objects.get(pk=response.json()["id"])


def test_the_runs_list_marks_observed_runs_and_filters_them(agent, oncall, gateway_run):
    export(agent.key, "genai_latest.pb")
    observed = Run.objects.get(source="otlp")
    client = logged_in(oncall)

    every = client.get("/runs/")
    only_observed = client.get("/runs/?source=otlp")
    only_gateway = client.get("/runs/?source=gateway")

    assert every.status_code == 200
    rows = every.content.decode()
    assert f'id="run-{observed.pk}"' in rows and f'id="run-{gateway_run.pk}"' in rows
    assert rows.count('class="badge observed"') == 1
    assert [run.pk for run in only_observed.context["runs"]] == [observed.pk]
    assert [run.pk for run in only_gateway.context["runs"]] == [gateway_run.pk]


def test_the_run_page_says_it_was_observed_and_what_enforcing_would_have_done(agent, oncall):
    export(agent.key, "children_first.pb")  # still waiting for its root: active
    waiting = Run.objects.get(source="otlp")
    export(agent.key, "genai_latest.pb")
    ended = Run.objects.exclude(pk=waiting.pk).get()
    client = logged_in(oncall)

    page = client.get(f"/runs/{ended.pk}/").content.decode()
    active_page = client.get(f"/runs/{waiting.pk}/").content.decode()

    assert "Observed from OpenTelemetry traces" in page
    assert (
        "Enforcing would have stopped it at call 2 with <code>tool_denied:email.send</code>" in page
    )
    assert "<code>email.send</code>" in page  # the tool call on the timeline
    # An observed run cannot be cancelled: its agent never asks the gateway.
    assert "Stop this run" not in active_page


def test_monitoring_rollups_and_top_talkers_count_observed_runs(agent):
    export(agent.key, body=fresh("genai_latest.pb"))

    rollups_compute()
    ranking = load_ranking(now=timezone.now())

    row = MetricRollup.objects.get(agent=agent.agent, agent_version="*", size="hour")
    assert row.runs == 1
    assert row.requests == 2
    assert [r.name for r in ranking.agents] == ["support-bot"]
    assert sorted(r.name for r in ranking.tools) == ["email.send", "kb.read"]
