"""The dashboard's tool latency chart plots the latencies agents reported, per tool."""

from __future__ import annotations

import pytest
from django.utils import timezone

from agents.monitoring import rollups as monitoring


def run_reporting(agent, start_run, latencies: dict[str, list[int]]) -> None:
    """One run, through the agent API, whose tools' results took ``latencies`` ms."""
    run = start_run()
    for tool, values in latencies.items():
        for index, latency in enumerate(values):
            call = agent.api.post_json(
                f"/api/v1/runs/{run['id']}/tool-calls",
                {"tool": tool, "args": {"q": f"question {index}"}},
            ).json()
            assert call["decision"] == "allow", call
            reported = agent.api.post_json(
                f"/api/v1/tool-calls/{call['id']}/result",
                {"ok": True, "output": {"hits": []}, "latency_ms": latency},
            )
            assert reported.status_code == 200, reported.content
    finished = agent.api.post_json(f"/api/v1/runs/{run['id']}/finish", {"status": "succeeded"})
    assert finished.status_code == 200, finished.content


def latency_chart(response) -> dict:
    return next(c for c in response.context["line_charts"] if c["title"].startswith("Tool latency"))


@pytest.mark.django_db
def test_the_latency_chart_draws_each_tool_from_the_latencies_reported(
    agent, start_run, oncall, client
):
    run_reporting(agent, start_run, {"search.read": [400, 900], "kb.read": [120]})
    monitoring.rollups_compute(now=timezone.now())
    client.force_login(oncall.user)

    response = client.get("/monitoring/?agent=support-bot")

    assert response.status_code == 200
    lines = {line.name: line.values for line in latency_chart(response).get("series", [])}
    last_bucket = {name: values[-1] for name, values in lines.items()}
    assert last_bucket == {
        "support-bot · every version · every tool p95": 900.0,
        "support-bot · every version · search.read p95": 900.0,
        "support-bot · every version · kb.read p95": 120.0,
    }
    legend = [name for name, _ in latency_chart(response)["legend"]]
    assert "support-bot · every version · kb.read p95" in legend
    assert all(value is None for values in lines.values() for value in values[:-1])


@pytest.mark.django_db
def test_the_page_names_each_tool_in_the_latency_chart_legend(agent, start_run, oncall, client):
    run_reporting(agent, start_run, {"search.read": [300]})
    monitoring.rollups_compute(now=timezone.now())
    client.force_login(oncall.user)

    page = client.get("/monitoring/").content.decode()

    assert "every agent · every version · search.read p95" in page
