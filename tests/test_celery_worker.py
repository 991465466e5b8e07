"""A real Celery worker with beat, against real Redis and the test database (PostgreSQL in CI).

It proves the production path: nobody polls the API, yet beat schedules the expiry sweep, the
worker expires the request, and the waiting client then sees ``approval_timeout``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection

from agents.models import Run
from approvals.models import ApprovalRequest

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/14"
ROOT = Path(__file__).resolve().parent.parent


def _redis_reachable() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _database_url() -> str:
    db = django_settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def start_worker(*, redis_url: str, tmp_path: Path, stdout: Any) -> subprocess.Popen:
    """A real Celery worker with beat on the test database and ``redis_url``."""
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "OPSCONSOLE_EMBEDDED_SCHEDULER": "false",
        "OPSCONSOLE_DATA_DIR": str(tmp_path),
        "DJANGO_SECRET_KEY": "worker-test-secret-key-not-for-production-use-0123456789",
    }
    connection.close()  # let the worker see committed rows without our connection in the way
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "opsconsole",
            "worker",
            "--beat",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
            "--schedule",
            str(tmp_path / "beat-schedule"),
        ],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_worker(process: subprocess.Popen, timeout: float = 20) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def worker(tmp_path):
    if not _redis_reachable():
        pytest.skip(f"needs Redis at {REDIS_URL} (CI starts it)")
    redis.Redis.from_url(REDIS_URL).flushdb()
    process = start_worker(redis_url=REDIS_URL, tmp_path=tmp_path, stdout=subprocess.PIPE)
    yield process
    stop_worker(process)


def test_a_real_worker_expires_an_approval_and_the_waiting_client_sees_approval_timeout(
    worker, agent, publish_policy
):
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
        assert worker.poll() is None, worker.stdout.read()
        time.sleep(0.5)
    assert status == "expired", "the worker never expired the request"
    assert Run.objects.get(pk=run["id"]).stop_reason == "approval_timeout:email.send"

    answer = agent.api.get(f"/api/v1/tool-calls/{pending['id']}?wait=5").json()
    assert (answer["decision"], answer["stop_reason"]) == ("stop", "approval_timeout:email.send")
