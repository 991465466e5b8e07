"""The web console at production scale: page latency over a million runs, and live-update latency.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
    REDIS_URL=redis://127.0.0.1:6379/14 \\
        .venv/bin/python bench/console.py

It creates (and at the end drops, unless ``--keep``) its own database ``opsconsole_bench_console``
on the PostgreSQL server of ``DATABASE_URL``, migrates it, and fills it with COPY: 1,000,000 runs
over a few dozen agents, statuses and stop reasons, and 10,000,000 trace events, one run holding
10,000 of them. Then it runs ``VACUUM ANALYZE`` and measures, over real HTTP against uvicorn
(logged in through the login form, session cookie), ``--requests`` sequential requests per page:

- the overview (the landing page: counts over the last hour and day);
- the runs list: first page, filtered (a busy agent + status + stop reason, and the quietest
  agent with the rarest reason), stop reason alone, a deep page (keyset cursor 95% of the way
  back), a task search (rare and common term);
- the run detail of the 10,000-event run: the first page of its trace, and its latest events;

with p50/p99 per page, the SQL queries per request and their database time (in-process with
Django's test client and ``CaptureQueriesContext`` on the same views, since HTTP cannot see them),
and the server's CPU per request (from /proc: what the page costs whatever else the machine does).
Goals (issue 3): p99 < 100 ms for the list, < 150 ms for the detail's first page, a constant query
count.

Then the live updates: ``--dashboards`` websockets in a child process (the session of a logged-in
on-call engineer, ``/ws/live/?topics=killswitch,run.<id>`` as a run's page opens it) and
``--decisions`` gateway decisions on that run spaced ``--spacing`` seconds apart; for each decision
and each dashboard the time from sending the decision request to the dashboard receiving its
``run.updated`` message.
Goal: p99 < 100 ms with 100 dashboards. The console coalesces live updates (at most one message
per run per 250 ms per socket, the latest state wins), so decisions closer together than 250 ms are
delayed by design; the spacing keeps every decision its own message. A burst at 20 decisions/s
shows the coalescing itself: messages per dashboard, and how late the final state arrives.

With ``REDIS_URL`` the server runs ``--workers`` uvicorn processes sharing the Redis channel layer
(production); without it, one process with the in-memory layer (the embedded default).
``--reuse`` keeps an existing filled database (``--keep`` from an earlier run) and only measures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse, urlunparse

import httpx

from opsconsole.devserver import ConsoleServer

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "opsconsole_bench_console"
GOAL_LIST_MS = 100.0
GOAL_DETAIL_MS = 150.0
GOAL_LIVE_MS = 100.0
COALESCE_SECONDS = 0.25  # opsconsole.consumers.COALESCE_SECONDS
WARMUP_DECISIONS = 3
USERNAME = "bench-oncall"
LIVE_AGENT = "bench-live"
AGENT_COUNT = 40
LONG_TRACE_KEY = "bench-long-trace"  # the idempotency key that marks the 10,000-event run
# Big enough that no budget, cap or loop check stops the live-update run.
POLICY = """
tools:
  allow: ["search.read", "kb.read", "http.get"]
budgets: {max_steps: 1000000, max_seconds: 86400, max_tool_calls: 1000000}
loop: {max_repeats: 1000000}
"""

# (status, stop reason, weight): most runs succeed, a third stop, a few are still going.
OUTCOMES: list[tuple[str, str, float]] = [
    ("succeeded", "ok", 60.0),
    ("failed", "error", 6.0),
    ("stopped", "max_tool_calls", 7.0),
    ("stopped", "max_steps", 3.0),
    ("stopped", "max_seconds", 3.0),
    ("stopped", "max_usd", 1.5),
    ("stopped", "max_tokens", 1.0),
    ("stopped", "tool_denied:browser.open", 2.5),
    ("stopped", "tool_denied:email.send", 1.0),
    ("stopped", "invalid_tool_args:http.get", 1.0),
    ("stopped", "invalid_tool_output:kb.read", 0.8),
    ("stopped", "loop_detected:search.read", 3.0),
    ("stopped", "tool_degraded:vendor.quote.get", 2.0),
    ("stopped", "approval_rejected:email.send", 1.2),
    ("stopped", "approval_timeout:ticket.update", 0.8),
    ("stopped", "kill_switch", 0.5),
    ("stopped", "agent_disabled", 0.3),
    ("stopped", "cancelled", 1.4),
]
ACTIVE_RUNS = 200  # the newest runs are still running (a few wait for approval)
VERBS = ["answer", "triage", "refund", "escalate", "summarise", "close", "reply to", "research"]
TOPICS = [
    "billing question", "late delivery", "password reset", "invoice copy", "damaged item",
    "refund status", "account locked", "plan upgrade", "shipping address", "tax receipt",
    "duplicate charge", "api outage", "export request", "gdpr deletion", "vendor quote",
    "warranty claim", "coupon code", "order cancel", "price match", "login loop",
]  # fmt: skip
TOOLS = ["search.read", "kb.read", "http.get", "browser.open", "vendor.quote.get"]
RUN_COLUMNS = (
    "id", "agent_id", "agent_version", "task", "metadata", "idempotency_key", "request_hash",
    "policy_version", "status", "stop_reason", "answer", "error", "max_steps", "max_seconds",
    "max_tool_calls", "max_usd", "max_tokens", "steps", "tool_calls", "tokens", "usd",
    "started_at", "last_activity_at", "ended_at",
)  # fmt: skip
EVENT_COLUMNS = ("id", "run_id", "kind", "at", "tool_call_id", "data")
NULL = "\\N"  # COPY's text format


# --- small helpers ----------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of the values at or below."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def with_database(url: str, name: str) -> str:
    parsed = urlparse(url.replace("postgres://", "postgresql://", 1))
    return urlunparse(parsed._replace(path=f"/{name}"))


class Progress:
    """Progress lines (a bar on a terminal): done/total, rate, elapsed."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.started = time.perf_counter()
        self.next_report = 0.0
        self.tty = sys.stdout.isatty()

    def update(self, done: int) -> None:
        fraction = done / self.total if self.total else 1.0
        if (fraction < self.next_report and done < self.total) or self.next_report > 1.0:
            return
        self.next_report = fraction + (0.01 if self.tty else 0.1) if done < self.total else 2.0
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        bar = "#" * int(fraction * 30)
        line = (
            f"{self.label:<8} [{bar:<30}] {done:>11,}/{self.total:,} {fraction:6.1%} "
            f"{elapsed:6.1f} s {rate:>9,.0f} rows/s"
        )
        if self.tty:
            end = "\n" if done >= self.total else ""
            print(f"\r{line}", end=end, flush=True)
        else:
            print(line, flush=True)


def copy_text(value: str) -> str:
    """Escape a value for COPY's text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


# --- the fill ---------------------------------------------------------------------------------


@dataclass
class FillPlan:
    runs: int
    events: int
    big_run_events: int
    agents: int
    seed: int = 4711
    big_run_id: int = 0
    # The times of the runs, computed once: run i started at start + i * step (+ jitter).
    start: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(days=60))
    step_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.step_seconds = 60 * 86400 / self.runs
        # A runaway run of the last few days holds the long trace.
        self.big_run_id = max(1, int(self.runs * 0.97))


def drop_secondary_indexes(cursor: Any, table: str) -> list[str]:
    """Drop the indexes that back no constraint; return their definitions to rebuild later."""
    cursor.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        WHERE i.indrelid = %s::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        (table,),
    )
    rows = cursor.fetchall()
    for name, _ in rows:
        cursor.execute(f"DROP INDEX {name}")
    return [definition for _, definition in rows]


def check_columns(cursor: Any, table: str, columns: tuple[str, ...]) -> None:
    """Fail loudly if the model gained a NOT NULL column the fill does not write."""
    cursor.execute(
        """
        SELECT column_name FROM information_schema.columns
        WHERE table_name = %s AND is_nullable = 'NO' AND column_default IS NULL
          AND is_identity = 'NO'
        """,
        (table,),
    )
    missing = {name for (name,) in cursor.fetchall()} - set(columns)
    if missing:
        sys.exit(f"{table} has NOT NULL columns the fill does not know: {sorted(missing)}")


def run_rows(plan: FillPlan, agent_ids: list[int]) -> Iterator[str]:
    rng = random.Random(plan.seed)
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(agent_ids))]  # some agents busier
    agents = [str(a) for a in rng.choices(agent_ids, weights=weights, k=plan.runs)]
    outcomes = rng.choices(OUTCOMES, weights=[w for *_, w in OUTCOMES], k=plan.runs)
    step = timedelta(seconds=plan.step_seconds)
    started = plan.start
    random_ = rng.random
    for index in range(plan.runs):
        run_id = index + 1
        started += step
        status, reason, _ = outcomes[index]
        if index >= plan.runs - ACTIVE_RUNS:
            status, reason = ("waiting_approval" if index % 10 == 0 else "running"), ""
        steps, tool_calls = 1 + int(random_() * 12), int(random_() * 15)
        if reason == "max_tool_calls":
            tool_calls = 15
        elif reason == "max_steps":
            steps = 30
        key = NULL
        if run_id == plan.big_run_id:
            status, reason, steps, tool_calls = "stopped", "max_tool_calls", 3334, 3333
            key = LONG_TRACE_KEY
        active = status in ("running", "waiting_approval")
        ended = started + timedelta(seconds=0.5 + random_() * 85)
        task = (
            f"{VERBS[int(random_() * len(VERBS))]} ticket {100000 + int(random_() * 900000)} "
            f"about {TOPICS[int(random_() * len(TOPICS))]}"
        )
        tokens = steps * (400 + int(random_() * 1200))
        begun = started.isoformat(" ")
        finished = ended.isoformat(" ")
        yield (
            f"{run_id}\t{agents[index]}\tv{1 + index % 3}\t{task}\t{{}}\t{key}\t\t1\t"
            f"{status}\t{reason}\t{'done' if status == 'succeeded' else ''}\t"
            f"{'tool failed' if status == 'failed' else ''}\t30\t90\t15\t2.000000\t{NULL}\t"
            f"{steps}\t{tool_calls}\t{tokens}\t{tokens * 0.000002:.6f}\t{begun}\t"
            f"{begun if active else finished}\t{NULL if active else finished}"
        )


def event_payloads(rng: random.Random) -> dict[str, list[str]]:
    """A pool of realistic event payloads per kind, already escaped for COPY."""
    pools: dict[str, list[dict[str, Any]]] = {"step": [], "tool_call": [], "tool_result": []}
    for i in range(400):
        tool = rng.choice(TOOLS)
        pools["step"].append(
            {
                "kind": "llm",
                "model": rng.choice(["small-model", "large-model"]),
                "tokens_in": rng.randint(300, 3000),
                "tokens_out": rng.randint(20, 400),
                "usd": f"{rng.uniform(0.0005, 0.02):.6f}",
                "latency_ms": rng.randint(200, 4000),
                "summary": f"decide the next action for step {i}",
                "counted": True,
            }
        )
        args = {"q": f"{rng.choice(TOPICS)} {rng.randint(1, 9999)}", "limit": rng.randint(1, 20)}
        pools["tool_call"].append(
            {
                "tool_call_id": 1000 + i,
                "tool": tool,
                "args": args,
                "decision": "allow",
                "stop_reason": "",
                "detail": "",
                "cost_usd": "0.000000",
            }
        )
        pools["tool_result"].append(
            {
                "tool_call_id": 1000 + i,
                "tool": tool,
                "ok": True,
                "valid": True,
                "errors": [],
                "error": "",
                "latency_ms": rng.randint(20, 2500),
                "usd": "0",
                "output": {"text": f"result {i}: " + "lorem ipsum " * rng.randint(1, 12)},
            }
        )
    return {kind: [copy_text(json.dumps(item)) for item in items] for kind, items in pools.items()}


def event_rows(plan: FillPlan) -> Iterator[str]:
    """Every run's trace in run order, the long run's events spread evenly through the stream
    (its rows scattered over the table, as a runaway that ran alongside others would have)."""
    rng = random.Random(plan.seed + 1)
    payloads = event_payloads(rng)
    normal_runs = plan.runs - 1
    remaining = plan.events - plan.big_run_events
    per_run, extra = divmod(remaining, normal_runs)
    big_every = max(1, plan.events // plan.big_run_events)
    big_started = plan.start + timedelta(seconds=plan.big_run_id * plan.step_seconds)
    big_done = 0
    event_id = 0
    cycle = ("step", "tool_call", "tool_result")

    def row(run_id: int, kind: str, moment: datetime, data: str) -> str:
        nonlocal event_id
        event_id += 1
        return f"{event_id}\t{run_id}\t{kind}\t{moment.isoformat(' ')}\t{NULL}\t{data}"

    def big_event() -> str:
        nonlocal big_done
        kind = "run_started" if big_done == 0 else cycle[big_done % 3]
        data = (
            copy_text(json.dumps({"task": "runaway", "policy_version": 1, "budgets": {}}))
            if big_done == 0
            else payloads[kind][big_done % 400]
        )
        big_done += 1
        return row(plan.big_run_id, kind, big_started + timedelta(seconds=big_done * 0.05), data)

    started_json = copy_text(
        json.dumps(
            {
                "task": "",
                "agent_version": "v1",
                "budgets": {"max_steps": 30, "max_seconds": 90, "max_tool_calls": 15},
                "requested": {},
                "policy_version": 1,
            }
        )
    )
    finish_json = copy_text(
        json.dumps({"status": "succeeded", "stop_reason": "ok", "answer": "done", "error": ""})
    )
    offsets = [timedelta(milliseconds=150 * n) for n in range(per_run + 2)]
    step = timedelta(seconds=plan.step_seconds)
    started = plan.start
    for run_id in range(1, plan.runs + 1):
        started += step
        if run_id == plan.big_run_id:
            continue
        count = per_run + (1 if run_id <= extra else 0)
        for n in range(count):
            if event_id % big_every == 0 and big_done < plan.big_run_events:
                yield big_event()
            if n == 0:
                kind, data = "run_started", started_json
            elif n == count - 1:
                kind, data = "finish", finish_json
            else:
                kind = cycle[(n - 1) % 3]
                data = payloads[kind][(run_id + n) % 400]
            yield row(run_id, kind, started + offsets[n], data)
    while big_done < plan.big_run_events:
        yield big_event()


def copy_rows(
    cursor: Any, table: str, columns: tuple[str, ...], rows: Iterator[str], total: int, label: str
) -> None:
    progress = Progress(label, total)
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    done = 0
    with cursor.copy(statement) as copy:
        while True:
            chunk = list(itertools.islice(rows, 20_000))
            if not chunk:
                break
            copy.write("\n".join(chunk) + "\n")
            done += len(chunk)
            progress.update(done)
    progress.update(total)


def fill(bench_url: str, plan: FillPlan) -> None:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(bench_url, autocommit=True) as conn, conn.cursor() as cursor:
        check_columns(cursor, "agents_run", RUN_COLUMNS)
        check_columns(cursor, "agents_traceevent", EVENT_COLUMNS)
        cursor.execute("SELECT id FROM agents_agent WHERE name LIKE 'agent-%%' ORDER BY id")
        agent_ids = [agent_id for (agent_id,) in cursor.fetchall()]
        # A bulk load: indexes are rebuilt once at the end instead of row by row, and foreign
        # keys are not re-checked per row (the rows are consistent by construction).
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("SET maintenance_work_mem = '1GB'")
        indexes = drop_secondary_indexes(cursor, "agents_run")
        indexes += drop_secondary_indexes(cursor, "agents_traceevent")
        copy_rows(cursor, "agents_run", RUN_COLUMNS, run_rows(plan, agent_ids), plan.runs, "runs")
        copy_rows(
            cursor, "agents_traceevent", EVENT_COLUMNS, event_rows(plan), plan.events, "events"
        )
        print(f"rebuilding {len(indexes)} indexes ...", flush=True)
        for definition in indexes:
            t = time.perf_counter()
            cursor.execute(definition)
            print(f"  {definition[:110]} ({time.perf_counter() - t:.1f} s)", flush=True)
        for table in ("agents_run", "agents_traceevent"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        cursor.execute("SET session_replication_role = origin")
        print("VACUUM ANALYZE ...", flush=True)
        cursor.execute("VACUUM ANALYZE agents_run")
        cursor.execute("VACUUM ANALYZE agents_traceevent")
        cursor.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        size = cursor.fetchone()[0]
    print(f"filled in {time.perf_counter() - started:.0f} s; database size {size}", flush=True)


# --- Django in this process: the schema, the people, query counts -----------------------------


def django_setup(bench_url: str, data_dir: str) -> None:
    os.environ["DATABASE_URL"] = bench_url
    os.environ["OPSCONSOLE_DATA_DIR"] = data_dir
    os.environ.pop("REDIS_URL", None)  # this process only prepares and counts; no live updates
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsconsole.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def prepare_world(*, fresh: bool, agents: int) -> tuple[str, str]:
    """The schema (when fresh), the agents, the bench policy, an on-call login and the live
    agent's key. Returns (password, live agent key)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from agents.models import Agent
    from agents.policy import services as policy_services
    from agents.policy.document import parse_yaml
    from agents.registry import services as registry_services
    from opsconsole import roles
    from opsconsole.services import user_create

    if fresh:
        call_command("migrate", interactive=False, verbosity=0)
        for index in range(agents):
            registry_services.agent_create(name=f"agent-{index:02d}", actor="system")
        policy_services.policy_publish(document=parse_yaml(POLICY), author="system", reason="bench")

    exists = get_user_model().objects.filter(username=USERNAME).exists()
    password = user_create(
        username=USERNAME, role=roles.ONCALL, actor="system", reset=exists
    ).password
    agent = Agent.objects.filter(name=LIVE_AGENT).first() or registry_services.agent_create(
        name=LIVE_AGENT, actor="system"
    )
    _, key = registry_services.agent_key_issue(agent=agent, actor="system")
    return password, key


@dataclass(frozen=True)
class Page:
    label: str
    path: str
    goal_ms: float


def pages_to_measure(big_run_id: int) -> list[Page]:
    """The pages, with parameters chosen from the data: a busy agent, a deep cursor, terms."""
    from django.db import connection

    from opsconsole.pagination import KeysetCursor

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM agents_run")
        total = cursor.fetchone()[0]
        cursor.execute(
            "SELECT started_at, id FROM agents_run ORDER BY started_at DESC, id DESC "
            "OFFSET %s LIMIT 1",
            [int(total * 0.95)],
        )
        moment, run_id = cursor.fetchone()
        cursor.execute(
            "SELECT a.name FROM agents_run r JOIN agents_agent a ON a.id = r.agent_id "
            "WHERE a.name LIKE 'agent-%%' GROUP BY a.name ORDER BY count(*) DESC OFFSET 5 LIMIT 1"
        )
        agent = cursor.fetchone()[0]
        cursor.execute(
            "SELECT a.name FROM agents_run r JOIN agents_agent a ON a.id = r.agent_id "
            "WHERE a.name LIKE 'agent-%%' GROUP BY a.name ORDER BY count(*) LIMIT 1"
        )
        quiet_agent = cursor.fetchone()[0]
        cursor.execute("SELECT task FROM agents_run WHERE id = %s", [total // 3])
        term = re.search(r"ticket (\d+)", cursor.fetchone()[0]).group(1)  # type: ignore[union-attr]
    deep = KeysetCursor(moment=moment, id=run_id).encode()
    filtered = urlencode({"agent": agent, "status": "stopped", "stop_reason": "tool_denied"})
    # The least busy agent and the rarest reason: the page must read all its stopped runs.
    rare = urlencode({"agent": quiet_agent, "status": "stopped", "stop_reason": "agent_disabled"})
    return [
        # The landing page: running runs, stops of the last hour and day, top stopping agents.
        Page("overview", "/", GOAL_LIST_MS),
        Page("runs: first page", "/runs/", GOAL_LIST_MS),
        Page("runs: agent+status+reason", f"/runs/?{filtered}", GOAL_LIST_MS),
        Page("runs: quiet agent+rare reason", f"/runs/?{rare}", GOAL_LIST_MS),
        Page("runs: stop reason only", "/runs/?stop_reason=tool_denied", GOAL_LIST_MS),
        Page("runs: deep page (95%)", f"/runs/?after={deep}", GOAL_LIST_MS),
        Page("runs: search, rare term", f"/runs/?q={term}", GOAL_LIST_MS),
        Page("runs: search, common term", "/runs/?q=warranty", GOAL_LIST_MS),
        Page("detail: 10k events, first", f"/runs/{big_run_id}/", GOAL_DETAIL_MS),
        Page("detail: 10k events, latest", f"/runs/{big_run_id}/?latest=1", GOAL_DETAIL_MS),
    ]


@dataclass(frozen=True)
class QueryFigures:
    count: int  # SQL queries per request
    sql_ms: float  # their summed database time, median of the samples


def count_queries(pages: list[Page], password: str, samples: int = 20) -> dict[str, QueryFigures]:
    """SQL queries per request of each page and their time, in this process with Django's test
    client on the same views (an HTTP client cannot see them)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    assert client.login(username=USERNAME, password=password)
    figures: dict[str, QueryFigures] = {}
    spent = [0.0]

    def timed(execute, sql, params, many, context):
        # Django records each query's time to the millisecond; sum them more finely here.
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            spent[0] += time.perf_counter() - started

    for page in pages:
        client.get(page.path)  # warm the session
        counts, times = set(), []
        for _ in range(samples):
            spent[0] = 0.0
            with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(timed):
                response = client.get(page.path)
            assert response.status_code == 200, (page.path, response.status_code)
            counts.add(len(captured.captured_queries))
            times.append(spent[0] * 1000)
        if len(counts) != 1:
            raise RuntimeError(f"{page.label}: the query count varies: {sorted(counts)}")
        figures[page.label] = QueryFigures(counts.pop(), statistics.median(times))
    return figures


def big_run_id() -> int:
    from agents.models import Run

    return int(Run.objects.filter(idempotency_key=LONG_TRACE_KEY).values_list("id", flat=True)[0])


# --- the server ---------------------------------------------------------------------------------


class Server(ConsoleServer):
    """uvicorn serving the console on the bench database; its output goes to a log file."""

    def __init__(self, env: dict[str, str], workers: int, log_path: Path) -> None:
        super().__init__(env=env, workers=workers, log=log_path, stop_timeout=20)
        self.base = self.url
        self.log_path = log_path

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its worker processes so far (Linux /proc):
        what a request costs the server, whatever else the machine is doing."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, parent = int(entry.name), int(fields[1])
            if pid == self.process.pid or parent == self.process.pid:
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def errors(self) -> str:
        text = self.log_path.read_text(errors="replace")
        tracebacks = text.count("Traceback (most recent call last)")
        timeouts = text.count("redis.exceptions.TimeoutError")
        return f"{tracebacks} tracebacks ({timeouts} redis TimeoutError) in {self.log_path}"


def log_in(base: str, password: str) -> httpx.Client:
    """Through the login form, as a browser does: the CSRF cookie and token, then the POST."""
    client = httpx.Client(base_url=base, timeout=30)
    page = client.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    if token is None:
        raise RuntimeError("no CSRF token on the login page")
    answer = client.post(
        "/login/",
        data={"username": USERNAME, "password": password, "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{base}/login/"},
    )
    if answer.status_code != 302 or "sessionid" not in client.cookies:
        raise RuntimeError(f"login failed: HTTP {answer.status_code}")
    return client


@dataclass
class PageRound:
    ms: list[float]  # wall time of each request, client side
    cpu_ms: float  # server CPU per request


def measure_pages(
    server: Server, client: httpx.Client, pages: list[Page], requests: int
) -> dict[str, PageRound]:
    rounds: dict[str, PageRound] = {}
    for page in pages:
        for _ in range(5):  # warm up: connections, caches, plans
            client.get(page.path)
        samples = []
        cpu_before = server.cpu_seconds()
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(page.path)
            samples.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{page.path}: HTTP {response.status_code}")
        cpu_ms = (server.cpu_seconds() - cpu_before) * 1000 / requests
        rounds[page.label] = PageRound(samples, cpu_ms)
    return rounds


# --- live updates -----------------------------------------------------------------------------
# The dashboards run in a process of their own, as browsers would: the process making decisions
# does not share an event loop (or the GIL) with 100 sockets. Times are time.monotonic(), one
# clock for every process on the machine (CLOCK_MONOTONIC).


@dataclass
class LiveResult:
    from_request_ms: list[float]
    from_response_ms: list[float]
    decision_ms: list[float]
    missing: int
    dropped: int = 0
    burst_messages_per_dashboard: float = 0.0
    burst_final_state_ms: list[float] = field(default_factory=list)
    # The slowest decisions: (decision ms, first dashboard ms, last dashboard ms).
    slowest: list[tuple[float, float, float]] = field(default_factory=list)


def dashboards_main(
    url: str, origin: str, session_id: str, count: int, ready: Any, done: Any, results: Any
) -> None:
    """Child process: open ``count`` dashboards, record every run.updated they receive."""
    results.put(asyncio.run(dashboards(url, origin, session_id, count, ready, done)))


async def dashboards(
    url: str, origin: str, session_id: str, count: int, ready: Any, done: Any
) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    from websockets.typing import Origin

    async def open_one() -> Any:
        ws = await connect(
            url,
            origin=Origin(origin),  # the origin check refuses sockets without one
            additional_headers={"Cookie": f"sessionid={session_id}"},
        )
        hello = json.loads(await ws.recv())
        if hello.get("event") != "hello" or len(hello["payload"]["topics"]) < 2:
            raise RuntimeError(f"unexpected greeting: {hello}")
        return ws

    # Ten at a time: quickly, but without a thundering herd of handshakes.
    sockets: list[Any] = []
    while len(sockets) < count:
        batch = min(10, count - len(sockets))
        sockets += await asyncio.gather(*(open_one() for _ in range(batch)))
    # Per dashboard: (tool calls in the run's usage, when it arrived), every run.updated.
    received: list[list[tuple[int, float]]] = [[] for _ in sockets]
    state = {"closing": False, "dropped": 0}

    async def listen(index: int, ws: Any) -> None:
        try:
            async for raw in ws:
                at = time.monotonic()
                message = json.loads(raw)
                if message.get("event") == "run.updated":
                    received[index].append((message["payload"]["usage"]["tool_calls"], at))
        except ConnectionClosed:
            pass
        if not state["closing"]:
            state["dropped"] += 1  # the server closed a dashboard's socket

    listeners = [asyncio.create_task(listen(i, ws)) for i, ws in enumerate(sockets)]
    ready.set()
    while not done.is_set():
        await asyncio.sleep(0.05)
    state["closing"] = True
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*listeners, return_exceptions=True)
    return {"received": received, "dropped": state["dropped"]}


async def measure_live(
    base: str,
    session_id: str,
    agent_key: str,
    *,
    dashboards: int,
    decisions: int,
    spacing: float,
    burst: int,
) -> LiveResult:
    import multiprocessing

    headers = {"Authorization": f"Bearer {agent_key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as api:
        answer = await api.post("/api/v1/runs", json={"task": "live-update bench"})
        answer.raise_for_status()
        run_id = answer.json()["id"]
        url = f"ws://127.0.0.1:{urlparse(base).port}/ws/live/?topics=killswitch,run.{run_id}"
        context = multiprocessing.get_context("spawn")
        ready, done, results = context.Event(), context.Event(), context.Queue()
        child = context.Process(
            target=dashboards_main,
            args=(url, base, session_id, dashboards, ready, done, results),
            daemon=True,
        )
        child.start()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, ready.wait, 120):
            child.terminate()
            raise RuntimeError("the dashboards did not connect")
        await asyncio.sleep(COALESCE_SECONDS * 2)

        async def decide(number: int) -> tuple[float, float]:
            sent = time.monotonic()
            response = await api.post(
                f"/api/v1/runs/{run_id}/tool-calls",
                json={"tool": "kb.read", "args": {"n": number}},
            )
            answered = time.monotonic()
            body = response.json()
            if response.status_code != 200 or body.get("decision") != "allow":
                raise RuntimeError(f"decision refused: {response.status_code} {body}")
            if body["run"]["usage"]["tool_calls"] != number:
                raise RuntimeError("another client is using the bench run")
            return sent, answered

        # Warm-up decisions, not measured (as the pages get warm-up requests): the first calls on a
        # new run and new sockets pay for connections and caches once.
        for number in range(1, WARMUP_DECISIONS + 1):
            sent, _ = await decide(number)
            await asyncio.sleep(max(0.0, spacing - (time.monotonic() - sent)))
        times: dict[int, tuple[float, float]] = {}
        first, last = WARMUP_DECISIONS + 1, WARMUP_DECISIONS + decisions
        for number in range(first, last + 1):
            times[number] = await decide(number)
            await asyncio.sleep(max(0.0, spacing - (time.monotonic() - times[number][0])))
        # A burst faster than the coalescing window: fewer messages, the last state still lands.
        burst_started = burst_ended = last_sent = 0.0
        if burst:
            burst_started = time.monotonic()
            for number in range(last + 1, last + burst + 1):
                last_sent, _ = await decide(number)
                await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - last_sent)))
            burst_ended = time.monotonic()
        await asyncio.sleep(1.0)
        done.set()
        data = await loop.run_in_executor(None, results.get, True, 60)
        await loop.run_in_executor(None, child.join, 20)
        await api.post(f"/api/v1/runs/{run_id}/finish", json={"status": "succeeded"})

    first_seen = [{count: at for count, at in reversed(messages)} for messages in data["received"]]
    from_request, from_response, missing = [], [], 0
    slowest: list[tuple[float, float, float]] = []
    for number, (sent, answered) in times.items():
        pushes = []
        for seen in first_seen:
            at = seen.get(number)
            if at is None:
                missing += 1
                continue
            pushes.append((at - sent) * 1000)
            from_request.append((at - sent) * 1000)
            from_response.append((at - answered) * 1000)
        if pushes:
            slowest.append(((answered - sent) * 1000, min(pushes), max(pushes)))
    slowest.sort(key=lambda item: item[2], reverse=True)
    result = LiveResult(
        slowest=slowest[:3],
        from_request_ms=from_request,
        from_response_ms=from_response,
        decision_ms=[(answered - sent) * 1000 for sent, answered in times.values()],
        missing=missing,
        dropped=data["dropped"],
    )
    if burst:
        final = WARMUP_DECISIONS + decisions + burst
        result.burst_messages_per_dashboard = statistics.mean(
            sum(1 for _, at in messages if burst_started <= at <= burst_ended)
            / (burst_ended - burst_started)
            for messages in data["received"]
        )
        result.burst_final_state_ms = [
            (seen[final] - last_sent) * 1000 for seen in first_seen if final in seen
        ]
        result.missing += sum(1 for seen in first_seen if final not in seen)
    return result


# --- the report -------------------------------------------------------------------------------


def print_table(
    pages: list[Page],
    rounds: list[dict[str, PageRound]],
    queries: dict[str, QueryFigures],
    live_rounds: list[LiveResult],
    dashboards: int,
) -> None:
    def median_of(label: str, fraction: float) -> float:
        return statistics.median(percentile(r[label].ms, fraction) for r in rounds)

    print(f"\nmedians of {len(rounds)} round(s)")
    header = (
        f"{'measure':<34}{'p50 ms':>9}{'p99 ms':>9}{'goal':>8}{'p99/goal':>10}"
        f"{'queries':>9}{'sql ms':>8}{'cpu ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for page in pages if rounds else []:
        p50, p99 = median_of(page.label, 0.5), median_of(page.label, 0.99)
        cpu = statistics.median(r[page.label].cpu_ms for r in rounds)
        figures = queries[page.label]
        print(
            f"{page.label:<34}{p50:>9.1f}{p99:>9.1f}{page.goal_ms:>8.0f}"
            f"{p99 / page.goal_ms:>10.2f}{figures.count:>9}{figures.sql_ms:>8.1f}{cpu:>8.1f}"
        )
    print(
        "(queries and sql ms: in-process, Django's test client; cpu ms: the server's CPU per "
        "request)"
    )
    if not live_rounds:
        return

    def live_median(pick: Callable[[LiveResult], list[float]], fraction: float) -> float:
        return statistics.median(percentile(pick(r), fraction) for r in live_rounds)

    rows = [
        (f"live: request -> {dashboards} dashboards", lambda r: r.from_request_ms, GOAL_LIVE_MS),
        ("live: response -> dashboards", lambda r: r.from_response_ms, None),
        ("live: the decision itself", lambda r: r.decision_ms, None),
    ]
    for label, pick, goal in rows:
        p50, p99 = live_median(pick, 0.5), live_median(pick, 0.99)
        ratio = f"{p99 / goal:>10.2f}" if goal else f"{'':>10}"
        print(f"{label:<34}{p50:>9.1f}{p99:>9.1f}{goal or '':>8}{ratio}{'':>9}")
    if any(r.burst_final_state_ms for r in live_rounds):
        p50 = live_median(lambda r: r.burst_final_state_ms, 0.5)
        p99 = live_median(lambda r: r.burst_final_state_ms, 0.99)
        rate = statistics.median(r.burst_messages_per_dashboard for r in live_rounds)
        print(f"{'burst 20/s: last decision -> seen':<34}{p50:>9.1f}{p99:>9.1f}")
        print(f"burst 20/s: {rate:.1f} messages per second per dashboard (coalesced from 20)")
    missing = sum(r.missing for r in live_rounds)
    dropped = sum(r.dropped for r in live_rounds)
    print(f"live messages missing: {missing}; dashboards dropped by the server: {dropped}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--big-run-events", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=AGENT_COUNT)
    parser.add_argument("--requests", type=int, default=100, help="per page and round")
    parser.add_argument("--dashboards", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=40, help="per round, spaced")
    parser.add_argument("--spacing", type=float, default=0.3, help="seconds between decisions")
    parser.add_argument("--burst", type=int, default=40, help="decisions at 20/s (0: none)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (with REDIS_URL)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure an existing filled database")
    parser.add_argument("--skip-live", action="store_true", help="pages only")
    parser.add_argument("--skip-pages", action="store_true", help="live updates only")
    args = parser.parse_args()

    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith("postgres"):
        sys.exit("Set DATABASE_URL=postgres://... (any database on the server; see --help).")
    redis_url = os.environ.get("REDIS_URL", "")
    admin_url = with_database(server_url, urlparse(server_url).path.lstrip("/") or "postgres")
    bench_url = with_database(server_url, DATABASE)

    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        fresh = not (args.reuse and exists.fetchone())
        if fresh:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DATABASE}")

    data_dir = tempfile.mkdtemp(prefix="opsconsole-bench-")
    secret = "bench-" + os.urandom(16).hex()
    os.environ["DJANGO_SECRET_KEY"] = secret
    django_setup(bench_url, data_dir)
    try:
        print(f"database {DATABASE}: {'filling' if fresh else 'reusing'}", flush=True)
        password, agent_key = prepare_world(fresh=fresh, agents=args.agents)
        plan = FillPlan(args.runs, args.events, args.big_run_events, args.agents)
        if fresh:
            fill(bench_url, plan)
        big = big_run_id()
        pages = pages_to_measure(big)
        queries = count_queries(pages, password)

        env = {
            **os.environ,
            "DATABASE_URL": bench_url,
            "OPSCONSOLE_DATA_DIR": data_dir,
            "DJANGO_SECRET_KEY": secret,
            "OPSCONSOLE_LOG_LEVEL": "WARNING",
            "OPSCONSOLE_EMBEDDED_SCHEDULER": "false",  # no sweeps or rollups during the bench
            "OPSCONSOLE_RATE_TOOL_CALLS": "off",
            "OPSCONSOLE_RATE_RUNS": "off",
        }
        workers = args.workers if redis_url else 1
        if redis_url:
            env["REDIS_URL"] = redis_url
        layer = f"Redis channel layer, {workers} workers" if redis_url else "in-memory, 1 worker"
        server = Server(env, workers, Path(data_dir) / "uvicorn.log")
        rounds: list[dict[str, PageRound]] = []
        live_rounds: list[LiveResult] = []
        with server:
            load_before = os.getloadavg()[0]
            client = log_in(server.base, password)
            for round_ in range(1, args.repeat + 1):
                if not args.skip_pages:
                    rounds.append(measure_pages(server, client, pages, args.requests))
                    summary = ", ".join(
                        f"{page.label} {percentile(rounds[-1][page.label].ms, 0.99):.0f}"
                        for page in pages
                    )
                    print(f"round {round_} pages p99 ms: {summary}", flush=True)
                if not args.skip_live:
                    live = asyncio.run(
                        measure_live(
                            server.base,
                            client.cookies["sessionid"],
                            agent_key,
                            dashboards=args.dashboards,
                            decisions=args.decisions,
                            spacing=args.spacing,
                            burst=args.burst,
                        )
                    )
                    live_rounds.append(live)
                    print(
                        f"round {round_} live ({layer}): p50 "
                        f"{percentile(live.from_request_ms, 0.5):.1f} ms, p99 "
                        f"{percentile(live.from_request_ms, 0.99):.1f} ms over "
                        f"{len(live.from_request_ms)} messages, {live.missing} missing, "
                        f"{live.dropped} dashboards dropped; slowest decisions (decision, "
                        "first and last dashboard, ms): "
                        + ", ".join(f"{d:.0f}/{a:.0f}/{b:.0f}" for d, a, b in live.slowest),
                        flush=True,
                    )
        print(
            f"\n{args.runs:,} runs, {args.events:,} trace events, {args.agents} agents; "
            f"HTTP against uvicorn ({layer}); {os.cpu_count()} CPUs, load average "
            f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after the measurements"
        )
        print(f"server log: {server.errors()}")
        print_table(pages, rounds, queries, live_rounds, args.dashboards)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


if __name__ == "__main__":
    main()
