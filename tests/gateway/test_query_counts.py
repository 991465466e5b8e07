"""Query counts on the gateway's allow path, pinned: an allowed tool call, a step and a tool
result each take a fixed number of queries once the caches are warm.

Every agent calls the gateway before every tool call, so a query added to this path is paid on
every decision of the fleet; these pins make such a change a visible, deliberate one.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def ask(agent, run_id: int, q: str) -> dict:
    """``kb.read`` is on the support agent's allowlist (the seed policy's global one)."""
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": "kb.read", "args": {"q": q}}
    )
    assert response.status_code == 200, response.content
    assert response.json()["decision"] == "allow", response.content
    return response.json()


def step(agent, run_id: int) -> dict:
    response = agent.api.post_json(
        f"/api/v1/runs/{run_id}/steps", {"tokens_in": 100, "tokens_out": 20, "usd": 0.001}
    )
    assert response.status_code == 200, response.content
    assert response.json()["decision"] == "continue", response.content
    return response.json()


def report(agent, tool_call_id: int) -> dict:
    response = agent.api.post_json(
        f"/api/v1/tool-calls/{tool_call_id}/result",
        {"ok": True, "output": {"text": "an answer"}, "latency_ms": 12},
    )
    assert response.status_code == 200, response.content
    assert response.json()["valid"] is True, response.content
    return response.json()


@pytest.fixture
def warm_run(agent, start_run) -> dict:
    """A running run after one of each call, so the policy cache is warm."""
    run = start_run()
    report(agent, ask(agent, run["id"], "warm up")["id"])
    step(agent, run["id"])
    return run


# Each pin counts a SAVEPOINT and its RELEASE: here the service's transaction.atomic() runs inside
# the test's own transaction (in production it is the outermost one, and Django logs no query for
# its BEGIN and COMMIT). The counts are the same on SQLite and PostgreSQL: a select_for_update is
# one SELECT on both (SQLite leaves out FOR UPDATE and locks the whole database instead).


def test_an_allow_decision_takes_a_fixed_number_of_queries(
    agent, warm_run, django_assert_num_queries
):
    # key, lock run, the agent's state (held: a pause waits for this decision), policy, kill
    # switch, loop count, breaker, insert call, insert event, update run
    with django_assert_num_queries(12) as captured:
        ask(agent, warm_run["id"], "pinned")
    statements = [
        q["sql"]
        for q in captured.captured_queries
        if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))
    ]
    assert len(statements) == 10, "\n".join(statements)


def test_a_step_takes_a_fixed_number_of_queries(agent, warm_run, django_assert_num_queries):
    # key, lock run, the agent's state, kill switch, insert event, update run
    with django_assert_num_queries(8):
        step(agent, warm_run["id"])


def test_a_tool_result_takes_a_fixed_number_of_queries(agent, warm_run, django_assert_num_queries):
    allowed = ask(agent, warm_run["id"], "to report")
    # key, the call (for this agent), lock run, the agent's state, lock the call, policy, save the
    # call, insert event, the breaker, lock the breaker, the tool's recent results, update breaker,
    # update run
    with django_assert_num_queries(15):
        report(agent, allowed["id"])
