"""Budgets and decisions under real concurrency: threads with their own database connections."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from agents.models import Run, ToolCall
from agents.policy.services import kill_switch_set
from approvals.models import ApprovalDecision, ApprovalRequest
from tests.conftest import JsonClient

pytestmark = pytest.mark.django_db(transaction=True)

POLICY = """
tools:
  allow: ["kb.read", "email.send"]
  definitions:
    email.send: {effect: write}
budgets: {max_tool_calls: 100, max_steps: 1000, max_seconds: 600}
"""


def in_thread(fn):
    """Run fn in a worker thread with its own connection, closed afterwards."""

    def wrapper(*args):
        try:
            return fn(*args)
        finally:
            connection.close()

    return wrapper


def test_64_agents_racing_on_a_budget_of_100_get_exactly_100_allows(agent, publish_policy):
    publish_policy(POLICY)
    run = agent.api.post_json(
        "/api/v1/runs", {"task": "race", "budgets": {"max_tool_calls": 100}}
    ).json()
    path = f"/api/v1/runs/{run['id']}/tool-calls"
    barrier = threading.Barrier(64)

    @in_thread
    def worker(n: int) -> list[str]:
        client = JsonClient(agent.key)
        barrier.wait()
        decisions = []
        for i in range(3):
            response = client.post_json(path, {"tool": "kb.read", "args": {"worker": n, "i": i}})
            assert response.status_code == 200, response.content
            decisions.append(response.json()["decision"])
        return decisions

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = [d for batch in pool.map(worker, range(64)) for d in batch]

    assert results.count("allow") == 100
    assert results.count("stop") == 92
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.tool_calls, db_run.status, db_run.stop_reason) == (
        100,
        "stopped",
        "max_tool_calls",
    )
    assert ToolCall.objects.filter(run_id=run["id"], decision="allow").count() == 100


def test_retries_of_one_idempotency_key_racing_spend_once(agent, publish_policy):
    publish_policy(POLICY)
    run = agent.api.post_json("/api/v1/runs", {"task": "retry"}).json()
    path = f"/api/v1/runs/{run['id']}/tool-calls"
    barrier = threading.Barrier(16)

    @in_thread
    def worker(_: int) -> int:
        barrier.wait()
        response = JsonClient(agent.key).post_json(
            path, {"tool": "kb.read", "args": {}, "idempotency_key": "k"}
        )
        assert response.status_code == 200, response.content
        return response.json()["id"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = set(pool.map(worker, range(16)))
    assert len(ids) == 1
    assert Run.objects.get(pk=run["id"]).tool_calls == 1


def test_two_reviewers_deciding_one_request_get_one_winner_and_one_409(
    agent, publish_policy, reviewer, second_reviewer
):
    publish_policy(POLICY)
    run = agent.api.post_json("/api/v1/runs", {"task": "write"}).json()
    pending = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {}}
    ).json()
    path = f"/api/v1/approvals/{pending['approval']['id']}/decision"
    barrier = threading.Barrier(2)

    @in_thread
    def decide(person_and_verdict) -> int:
        person, body = person_and_verdict
        barrier.wait()
        return JsonClient(person.token).post_json(path, body).status_code

    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = sorted(
            pool.map(
                decide,
                [
                    (reviewer, {"verdict": "approve"}),
                    (second_reviewer, {"verdict": "reject", "comment": "no"}),
                ],
            )
        )
    assert codes == [200, 409]
    assert ApprovalDecision.objects.count() == 1
    request = ApprovalRequest.objects.get(pk=pending["approval"]["id"])
    assert request.status in {"approved", "rejected"}


def test_no_call_that_starts_after_stop_all_is_allowed(agent, publish_policy):
    publish_policy(POLICY)
    runs = [
        agent.api.post_json("/api/v1/runs", {"task": f"burst {i}"}).json()["id"] for i in range(8)
    ]
    switched_at: list[float] = []
    stop = threading.Event()

    @in_thread
    def hammer(run_id: int) -> list[tuple[float, str]]:
        client = JsonClient(agent.key)
        seen = []
        i = 0
        while not stop.is_set() and i < 200:
            started = time.monotonic()
            response = client.post_json(
                f"/api/v1/runs/{run_id}/tool-calls", {"tool": "kb.read", "args": {"i": i}}
            )
            seen.append((started, response.json().get("decision", "error")))
            i += 1
        return seen

    with ThreadPoolExecutor(max_workers=9) as pool:
        futures = [pool.submit(hammer, run_id) for run_id in runs]
        time.sleep(0.3)
        kill_switch_set(mode="stop_all", reason="burst test", actor="system")
        switched_at.append(time.monotonic())
        time.sleep(0.3)
        stop.set()
        seen = [item for future in futures for item in future.result()]
        connection.close()

    after = [decision for started, decision in seen if started > switched_at[0]]
    assert after, "no call started after the switch: the test proved nothing"
    assert "allow" not in after
    assert set(after) == {"stop"}
