"""Correct across processes: the console under uvicorn with several workers (on PostgreSQL each
with the fast path and its per-process caches), and every control a person has - a policy
publish, the kill switch, a pause, a disable, a key revocation - governing the very next decision
in every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from django.db import connection

from agents.models import Run
from agents.policy.services import kill_switch_set
from agents.registry import services as registry
from opsconsole.devserver import ConsoleServer
from tests.servers import session_database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.workers]

WORKERS = 2
ALLOW_BOTH = """
tools:
  allow: ["kb.read", "search.read", "ticket.update"]
  definitions:
    ticket.update: {effect: write}
writes: {require_approval: false}
budgets: {max_steps: 1000, max_seconds: 600, max_tool_calls: 1000}
loop: {max_repeats: 1000}
"""
ALLOW_SEARCH_ONLY = """
tools:
  allow: ["search.read"]
budgets: {max_steps: 1000, max_seconds: 600, max_tool_calls: 1000}
loop: {max_repeats: 1000}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, django_db_setup, django_db_blocker) -> Iterator[ConsoleServer]:
    """One server for the module's tests (each test's rows are its own: new keys, new runs)."""
    tmp_path = tmp_path_factory.mktemp("workers")
    with django_db_blocker.unblock():
        connection.close()  # the workers must see what the tests commit
    env = {
        "DATABASE_URL": session_database_url(),
        "REDIS_URL": None,
        "OPSCONSOLE_EMBEDDED_SCHEDULER": "false",
        "OPSCONSOLE_DATA_DIR": str(tmp_path),
        "OPSCONSOLE_RATE_RUNS": "off",
        "OPSCONSOLE_RATE_TOOL_CALLS": "off",
        "DJANGO_SECRET_KEY": "workers-test-secret-key-not-for-production-use-0123456789",
    }
    with ConsoleServer(env=env, workers=WORKERS, log=tmp_path / "uvicorn.log") as console:
        yield console


def decide(server: ConsoleServer, key: str, run_id: int, tool: str = "kb.read", i: int = 0):
    """One call on a connection of its own, so calls spread over the workers."""
    response = httpx.post(
        f"{server.url}/api/v1/runs/{run_id}/tool-calls",
        json={"tool": tool, "args": {"i": i}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return response


def start_runs(server: ConsoleServer, key: str, count: int) -> list[int]:
    runs = []
    for _ in range(count):
        response = httpx.post(
            f"{server.url}/api/v1/runs",
            json={"task": "across processes"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        runs.append(response.json()["id"])
    return runs


def warm(server: ConsoleServer, key: str, runs: list[int]) -> None:
    """Every worker has decided (and cached the policy and the key) before the change."""
    for i in range(2):
        for run_id in runs:
            answer = decide(server, key, run_id, i=i)
            assert answer.status_code == 200 and answer.json()["decision"] == "allow", answer.text


def next_decisions(
    server: ConsoleServer, key: str, runs: list[int], tool: str = "kb.read"
) -> list[tuple]:
    answers = [decide(server, key, run_id, tool=tool, i=99) for run_id in runs]
    return [(a.status_code, a.json().get("decision"), a.json().get("stop_reason")) for a in answers]


def test_every_control_governs_the_very_next_decision_in_every_worker(
    server, agent, publish_policy
):
    publish_policy(ALLOW_BOTH)
    spread = 2 * WORKERS

    runs = start_runs(server, agent.key, spread)
    warm(server, agent.key, runs)
    publish_policy(ALLOW_SEARCH_ONLY)
    assert (
        next_decisions(server, agent.key, runs) == [(200, "stop", "tool_denied:kb.read")] * spread
    )

    publish_policy(ALLOW_BOTH)
    runs = start_runs(server, agent.key, spread)
    warm(server, agent.key, runs)
    # disable_writes stops no run by itself: the decision itself must see the switch.
    kill_switch_set(mode="disable_writes", reason="incident", actor="system")
    assert (
        next_decisions(server, agent.key, runs, tool="ticket.update")
        == [(200, "stop", "kill_switch")] * spread
    )
    kill_switch_set(mode="off", reason="over", actor="system")

    runs = start_runs(server, agent.key, spread)
    warm(server, agent.key, runs)
    registry.agent_pause(agent=agent.agent, actor="user:olivia", by="olivia", reason="runaway")
    assert next_decisions(server, agent.key, runs) == [(200, "stop", "agent_disabled")] * spread
    registry.agent_resume(agent=agent.agent, actor="user:olivia", by="olivia")

    runs = start_runs(server, agent.key, spread)
    warm(server, agent.key, runs)
    agent.agent.refresh_from_db()
    registry.agent_set_enabled(agent=agent.agent, enabled=False, actor="system", reason="retired")
    assert next_decisions(server, agent.key, runs) == [(200, "stop", "agent_disabled")] * spread
    agent.agent.refresh_from_db()
    registry.agent_set_enabled(agent=agent.agent, enabled=True, actor="system")

    runs = start_runs(server, agent.key, spread)
    warm(server, agent.key, runs)
    registry.agent_key_revoke(key_id=agent.agent.keys.get().pk, actor="system")
    assert [status for status, *_ in next_decisions(server, agent.key, runs)] == [401] * spread
    assert all(Run.objects.get(pk=run_id).tool_calls == 2 for run_id in runs)


async def test_fifty_parallel_calls_on_a_budget_of_fifteen_get_exactly_fifteen_allows(
    server, agent, publish_policy
):
    from asgiref.sync import sync_to_async

    await sync_to_async(publish_policy)(ALLOW_BOTH)
    headers = {"Authorization": f"Bearer {agent.key}"}
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(
        base_url=server.url, headers=headers, limits=limits, timeout=60
    ) as client:
        started = await client.post(
            "/api/v1/runs", json={"task": "race", "budgets": {"max_tool_calls": 15}}
        )
        run_id = started.json()["id"]
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/api/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "args": {"i": i}}
                )
                for i in range(50)
            )
        )
    decisions = [answer.json()["decision"] for answer in answers]
    assert (decisions.count("allow"), decisions.count("stop")) == (15, 35)
    run = await Run.objects.aget(pk=run_id)
    assert (run.tool_calls, run.stop_reason) == (15, "max_tool_calls")
    await sync_to_async(lambda: connection.close())()
