"""A real Celery worker with beat, against real Redis and the test database (PostgreSQL in CI).

It proves the production path: nobody polls the API, yet beat schedules the expiry sweep, the
worker expires the request, and the waiting client then sees ``approval_timeout``.
"""

from __future__ import annotations

import os
import time

import pytest
import redis
from django.db import connection

from agents.models import Run
from approvals.models import ApprovalRequest
from tests.servers import start_worker, stop_worker

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/14"


def _redis_reachable() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def worker(tmp_path):
    if not _redis_reachable():
        pytest.skip(f"needs Redis at {REDIS_URL} (CI starts it)")
    redis.Redis.from_url(REDIS_URL).flushdb()
    log = tmp_path / "worker.log"
    process = start_worker(redis_url=REDIS_URL, tmp_path=tmp_path, log=log)
    yield process, log
    stop_worker(process)


def test_a_real_worker_expires_an_approval_and_the_waiting_client_sees_approval_timeout(
    worker, agent, publish_policy
):
    process, log = worker
    publish_policy("""
tools:
  allow: ["email.send"]
  definitions:
    email.send: {effect: write, approval: {timeout_seconds: 2}}
""")
    run = agent.api.post_json("/api/v1/runs", {"task": "send the report"}).json()
    pending = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls",
        {"tool": "email.send", "args": {"to": "boss@example.com"}},
    ).json()
    assert pending["decision"] == "pending_approval"
    request_id = pending["approval"]["id"]
    connection.close()

    deadline = time.monotonic() + 45
    status = "pending"
    while time.monotonic() < deadline:
        status = ApprovalRequest.objects.get(pk=request_id).status
        connection.close()
        if status != "pending":
            break
        assert process.poll() is None, log.read_text()
        time.sleep(0.5)
    assert status == "expired", "the worker never expired the request"
    assert Run.objects.get(pk=run["id"]).stop_reason == "approval_timeout:email.send"

    answer = agent.api.get(f"/api/v1/tool-calls/{pending['id']}?wait=5").json()
    assert (answer["decision"], answer["stop_reason"]) == ("stop", "approval_timeout:email.send")
