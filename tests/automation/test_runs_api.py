"""GET /api/v1/runs: the runs page's filters and keyset pages for people's tokens (on-call and
up); POST /api/v1/runs on the same path stays the agents' run creation."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents.models import Run

URL = "/api/v1/runs"


def ids(response) -> list[int]:
    return [run["id"] for run in response.json()["results"]]


@pytest.mark.parametrize("persona", ["oncall", "reviewer", "admin"])
def test_people_with_a_role_list_runs_newest_first(persona, request, fleet):
    person = request.getfixturevalue(persona)
    response = person.api.get(URL)
    assert response.status_code == 200, response.content
    assert ids(response) == fleet.newest_first
    assert response.json()["next_after"] is None
    first = response.json()["results"][-1]
    assert (first["agent"], first["status"], first["stop_reason"]) == (
        "support-bot",
        "succeeded",
        "ok",
    )
    assert first["usage"]["tool_calls"] == 1


def test_a_person_without_a_role_an_agent_and_nobody_are_refused(outsider, agent, anonymous, fleet):
    refused = outsider.api.get(URL)
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert agent.api.get(URL).status_code == 403
    assert anonymous.get(URL).status_code == 401


def test_agents_still_start_runs_on_the_same_path_and_people_cannot(agent, oncall, db):
    created = agent.api.post_json(URL, {"task": "answer a question"})
    assert created.status_code == 201, created.content
    assert Run.objects.get(pk=created.json()["id"]).agent.name == "support-bot"
    refused = oncall.api.post_json(URL, {"task": "sneaky"})
    assert refused.status_code == 403
    assert Run.objects.count() == 1


def test_keyset_pages_walk_every_run_once(oncall, fleet):
    seen, after, pages = [], None, 0
    while True:
        query = {"limit": 2, **({"after": after} if after else {})}
        page = oncall.api.get(URL, query)
        assert page.status_code == 200, page.content
        seen += ids(page)
        pages += 1
        after = page.json()["next_after"]
        if after is None:
            break
    assert seen == fleet.newest_first
    assert pages == 3


def test_most_expensive_first_pages_by_cost(oncall, fleet):
    for usd, run in zip(
        ("0.30", "0.10", "0.20"), (fleet.ok, fleet.denied, fleet.other), strict=True
    ):
        Run.objects.filter(pk=run.pk).update(usd=Decimal(usd))
    first = oncall.api.get(URL, {"sort": "cost", "limit": 2})
    assert ids(first) == [fleet.ok.pk, fleet.other.pk]
    second = oncall.api.get(URL, {"sort": "cost", "limit": 2, "after": first.json()["next_after"]})
    assert ids(second)[0] == fleet.denied.pk


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "stopped"}, ["cancelled", "denied"]),
        ({"agent": "other-bot"}, ["other"]),
        ({"stop_reason": "tool_denied"}, ["denied"]),
        ({"stop_reason": "tool_denied:db.drop"}, ["denied"]),
        ({"stop_reason": "cancelled"}, ["cancelled"]),
        ({"tool": "kb.read"}, ["other", "ok"]),
        ({"q": "REFUND"}, ["ok"]),
        ({"agent": "support-bot", "status": "succeeded"}, ["ok"]),
    ],
)
def test_the_runs_page_filters(oncall, fleet, query, expected):
    response = oncall.api.get(URL, query)
    assert response.status_code == 200, response.content
    assert ids(response) == [getattr(fleet, name).pk for name in expected]


def test_time_filters(oncall, fleet):
    old = fleet.ok.started_at - timedelta(days=3)
    Run.objects.filter(pk=fleet.ok.pk).update(started_at=old)
    recent = oncall.api.get(URL, {"range": "24h"})
    assert fleet.ok.pk not in ids(recent) and len(ids(recent)) == 4
    window = oncall.api.get(
        URL,
        {
            "since": (old - timedelta(minutes=1)).isoformat(),
            "until": (old + timedelta(minutes=1)).isoformat(),
        },
    )
    assert ids(window) == [fleet.ok.pk]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "exploded"}, "status"),
        ({"stop_reason": "bored"}, "stop_reason"),
        ({"sort": "random"}, "sort"),
        ({"limit": 0}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"after": "not-a-cursor"}, "after"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(oncall, fleet, query, field):
    response = oncall.api.get(URL, query)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "malformed"
    assert field in body["detail"]


def test_a_page_costs_the_same_queries_whatever_its_size(oncall, fleet):
    oncall.api.get(URL, {"limit": 1})  # warm the token's last-used touch
    with CaptureQueriesContext(connection) as small:
        assert oncall.api.get(URL, {"limit": 1}).status_code == 200
    with CaptureQueriesContext(connection) as large:
        assert oncall.api.get(URL, {"limit": 200}).status_code == 200
    # the token, the role, the page (with each run's agent joined)
    assert len(small) == len(large) == 3
