"""Faults: the gateway's own PostgreSQL or Redis dies under load; an audit write fails.

The PostgreSQL and Redis tests start their *own* servers (a temporary cluster on a free port, a
redis-server on a free port) and their own uvicorn, never touching the shared ones. They take
about a minute together and run in CI (marker ``faults``, not deselected).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import DatabaseError

from agents.models import KillSwitch, Run, ToolCall
from approvals.models import ApprovalRequest
from opsconsole.devserver import ConsoleServer, EnvOverrides, child_environment, free_port
from opsconsole.models import AuditEntry
from opsconsole_client import CONTROL_PLANE_UNAVAILABLE, Budgets, Gateway, RetryPolicy, Stop

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
tools:
  allow: ["kb.read"]
budgets: {max_tool_calls: 100000, max_steps: 100000, max_seconds: 86400}
loop: {max_repeats: 100000}
"""
# How long one decision may take while the database is down: pool timeout (2 s) plus connect
# timeout (2 s) plus slack for a loaded machine.
DECISION_BOUND_SECONDS = 8.0
BIG_BUDGETS = Budgets(max_steps=100000, max_seconds=86400, max_tool_calls=100000)
RECOVERY_BOUND_SECONDS = 30.0


def manage(env: EnvOverrides, *args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


PREPARE = """
from agents.policy.document import parse_yaml
from agents.policy.services import policy_publish
from agents.registry.services import agent_create, agent_key_issue
policy_publish(document=parse_yaml({policy!r}), author="system", reason="faults")
agent = agent_create(name="fault-bot", actor="system")
print(agent_key_issue(agent=agent, actor="system")[1])
"""


def prepare_database(env: EnvOverrides) -> str:
    """Migrate the gateway's database and create an agent; returns its key."""
    manage(env, "migrate", "--no-input", "-v", "0")
    return manage(env, "shell", "-c", PREPARE.format(policy=POLICY)).strip().splitlines()[-1]


@contextlib.contextmanager
def gateway_server(env: EnvOverrides, log: Path) -> Iterator[str]:
    """The gateway under uvicorn; its output goes to ``log`` (quoted if it fails to start)."""
    with ConsoleServer(env=env, log=log) as server:
        yield server.url


@dataclass
class Call:
    started: float
    ended: float
    outcome: str  # "allow" or the stop reason
    run_id: int | None = None
    marker: str = ""


@dataclass
class Load:
    """A few agent threads using the Python client: run after run, tool call after tool call."""

    base: str
    key: str
    threads: int = 4
    calls: list[Call] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _worker(self, worker: int) -> None:
        counter = 0
        while not self.stopping.is_set():
            gateway = Gateway(
                self.base,
                self.key,
                timeout=DECISION_BOUND_SECONDS + 2,
                retry_policy=RetryPolicy(attempts=1),
            )
            started = time.monotonic()
            try:
                with gateway.run(f"fault load {worker}", budgets=BIG_BUDGETS) as run:
                    while not self.stopping.is_set():
                        counter += 1
                        marker = f"w{worker}-{counter}"
                        started = time.monotonic()
                        run.tool("kb.read", {"q": marker}, lambda args: {"hits": []})
                        # impl ran: the gateway said allow and the client acted on it.
                        self._record(Call(started, time.monotonic(), "allow", run.id, marker))
                        time.sleep(0.01)
            except Stop as stop:
                self._record(Call(started, time.monotonic(), stop.reason))
                time.sleep(0.05)
            finally:
                gateway.close()

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def start(self) -> list[threading.Thread]:
        workers = [
            threading.Thread(target=self._worker, args=(n,), daemon=True)
            for n in range(self.threads)
        ]
        for thread in workers:
            thread.start()
        return workers

    def wait_for_allows(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(c.outcome == "allow" for c in list(self.calls)) < count:
            assert time.monotonic() < deadline, "the load did not get going"
            time.sleep(0.1)

    def between(self, start: float, end: float) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if start <= c.started and c.ended <= end]


# --- PostgreSQL stopped mid-load --------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class OwnPostgres:
    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # initdb refuses to run as root: run the server as the postgres OS user.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, check=check
        )

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        # Immediate: like a crash (no checkpoint); committed work must survive it.
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
        )

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed")
    root = Path(tempfile.mkdtemp(prefix="opsconsole-faults-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = OwnPostgres(bindir, root, free_port())
    server.init()
    server.start()
    try:
        import psycopg

        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE opsconsole_faults")
        yield server
    finally:
        server._run(
            str(bindir / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "stop", check=False
        )
        shutil.rmtree(root, ignore_errors=True)


def _gateway_env(**extra: str) -> EnvOverrides:
    """The gateway processes' environment, as overrides of ours: never the shared database or
    Redis (``None`` removes a variable) unless ``extra`` names a private one."""
    return {
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "OPSCONSOLE_DB_POOL_TIMEOUT": "2",
        "OPSCONSOLE_DB_CONNECT_TIMEOUT": "2",
        "OPSCONSOLE_RATE_RUNS": "off",
        "OPSCONSOLE_RATE_TOOL_CALLS": "off",
        "OPSCONSOLE_EMBEDDED_SCHEDULER": "false",
        "DJANGO_SETTINGS_MODULE": "opsconsole.settings",
        **extra,
    }


@pytest.mark.faults
def test_postgresql_stopped_mid_load_gives_quick_503s_loses_nothing_and_recovers(
    own_postgres, tmp_path
):
    database_url = own_postgres.url("opsconsole_faults")
    env = _gateway_env(DATABASE_URL=database_url, OPSCONSOLE_DATA_DIR=str(tmp_path))
    key = prepare_database(env)

    with gateway_server(env, tmp_path / "uvicorn.log") as base:
        load = Load(base, key)
        workers = load.start()
        load.wait_for_allows(20)
        down_at = time.monotonic()
        own_postgres.stop()
        stopped_at = time.monotonic()
        time.sleep(8)
        restart_at = time.monotonic()
        own_postgres.start()
        # The gateway must recover by itself: wait for an allow that started after the restart.
        deadline = restart_at + RECOVERY_BOUND_SECONDS
        recovered_at = None
        while time.monotonic() < deadline and recovered_at is None:
            time.sleep(0.2)
            after = [c for c in load.between(restart_at, time.monotonic()) if c.outcome == "allow"]
            recovered_at = min((c.ended for c in after), default=None)
        time.sleep(1)
        load.stopping.set()
        for thread in workers:
            thread.join(timeout=DECISION_BOUND_SECONDS + 5)

    before = [c for c in load.calls if c.ended < down_at and c.outcome == "allow"]
    # Calls that started while the database was down (a little after the stop, so none was
    # already past its commit).
    outage = load.between(stopped_at + 0.5, restart_at)
    assert len(before) >= 20
    assert outage, "no call was made while the database was down"
    assert {c.outcome for c in outage} == {CONTROL_PLANE_UNAVAILABLE}
    slowest = max(c.ended - c.started for c in outage)
    assert slowest <= DECISION_BOUND_SECONDS, slowest
    assert recovered_at is not None, "the gateway did not recover after PostgreSQL came back"

    # Nothing acknowledged is lost: every allow the agents acted on is in the database.
    acknowledged = {c.marker for c in load.calls if c.outcome == "allow"}
    import psycopg

    with psycopg.connect(database_url) as conn:
        stored = {
            row[0]
            for row in conn.execute(
                "SELECT args->>'q' FROM agents_toolcall WHERE decision = 'allow'"
            )
        }
    assert acknowledged <= stored, sorted(acknowledged - stored)[:10]

    print(
        f"\nfaults/postgres: {len(before)} allows before the stop; {len(outage)} calls during "
        f"the outage, all {CONTROL_PLANE_UNAVAILABLE}, slowest {slowest:.2f} s; recovered "
        f"{recovered_at - restart_at:.2f} s after the restart; {len(acknowledged)} "
        f"acknowledged allows, all stored"
    )


# --- Redis stopped mid-load -------------------------------------------------------------------


@pytest.mark.faults
def test_redis_stopped_mid_load_leaves_decisions_going(own_redis, tmp_path):
    port, start_redis, stop_redis = own_redis
    env = _gateway_env(
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        OPSCONSOLE_DATA_DIR=str(tmp_path),
        # Rate limiting on, so the cache is really in the decision path.
        OPSCONSOLE_RATE_RUNS="100000/min",
        OPSCONSOLE_RATE_TOOL_CALLS="100000/min",
    )
    key = prepare_database(env)

    with gateway_server(env, tmp_path / "uvicorn.log") as base:
        load = Load(base, key, threads=2)
        workers = load.start()
        load.wait_for_allows(10)
        down_at = time.monotonic()
        stop_redis()
        time.sleep(5)
        up_at = time.monotonic()
        start_redis()
        time.sleep(7)  # past the limiter's 5 s back-off, so it uses Redis again
        load.stopping.set()
        for thread in workers:
            thread.join(timeout=15)
        import redis

        counters = redis.Redis(port=port).keys("*throttle*")

    during = load.between(down_at + 0.2, up_at)
    after = load.between(up_at + 6, time.monotonic())
    assert during and after
    assert {c.outcome for c in during} == {"allow"}
    assert {c.outcome for c in after} == {"allow"}
    slowest = max(c.ended - c.started for c in during)
    assert slowest < 2.0, slowest
    # Rate limiting came back with Redis (its counters are there again).
    assert counters
    print(
        f"\nfaults/redis: {len(during)} decisions while Redis was down, all allowed, slowest "
        f"{slowest * 1000:.0f} ms; {len(after)} after it returned; rate-limit counters back"
    )


# --- an audit write that fails ----------------------------------------------------------------


@pytest.fixture
def audit_fails(monkeypatch):
    def refuse(**kwargs):
        raise DatabaseError("disk full (simulated)")

    monkeypatch.setattr(AuditEntry.objects, "create", refuse)


@pytest.mark.faults
def test_a_kill_switch_change_whose_audit_fails_is_not_made(admin, audit_fails):
    response = admin.api.put_json("/api/v1/kill-switch", {"mode": "stop_all", "reason": "outage"})

    assert response.status_code == 503
    assert response.json()["error"] == "control_plane_unavailable"
    assert KillSwitch.objects.get(pk=1).mode == "off"


@pytest.mark.faults
def test_an_approval_whose_audit_fails_does_not_allow(agent, reviewer, publish_policy, start_run):
    publish_policy('tools: {allow: ["email.send"], definitions: {"email.send": {effect: write}}}')
    run = start_run()
    call = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {"to": "x"}}
    ).json()
    assert call["decision"] == "pending_approval"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            AuditEntry.objects,
            "create",
            lambda **kwargs: (_ for _ in ()).throw(DatabaseError("disk full (simulated)")),
        )
        response = reviewer.api.post_json(
            f"/api/v1/approvals/{call['approval']['id']}/decision", {"verdict": "approve"}
        )

    assert response.status_code == 503
    assert ApprovalRequest.objects.get(pk=call["approval"]["id"]).status == "pending"
    assert ToolCall.objects.get(pk=call["id"]).decision == "pending_approval"
    # The agent still waits; it is not allowed.
    assert agent.api.get(f"/api/v1/tool-calls/{call['id']}").json()["decision"] == (
        "pending_approval"
    )


@pytest.mark.faults
def test_a_cancel_whose_audit_fails_leaves_the_run_running(agent, oncall, start_run, audit_fails):
    run = start_run()

    response = oncall.api.post_json(f"/api/v1/runs/{run['id']}/cancel", {"reason": "x"})

    assert response.status_code == 503
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason) == ("running", "")
