"""Gateway decision latency and throughput against the floor, measured side by side in one run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/gateway.py

It creates (and drops) its own database, ``<the database named>_bench``, on that server and starts two servers
with ``--workers`` uvicorn processes each: the console, and the floor - a framework-free ASGI app
(``floor_app`` below) doing one conditional budget ``UPDATE ... RETURNING`` and one event
``INSERT`` in a transaction on an async psycopg pool, on the same database. Each round measures,
on both, tool-call decisions (``POST /api/v1/runs/{id}/tool-calls``; the floor's own URL): one
sequential client (p50/p99 latency) and 16 and 64 concurrent clients (decisions/s), each client
on its own run; then, on the console only, the time from a reviewer's approval
(``POST /api/v1/approvals/{id}/decision``) to the waiting agent's long poll answering
(``GET /api/v1/tool-calls/{id}?wait=30``). Rounds interleave the console and the floor, so both
see the same machine; medians of the rounds are reported with their ratio to the floor.

``--slow-path`` turns the gateway's fast path off (``OPSCONSOLE_GATEWAY_FAST_PATH=false``): every
decision through Django, as before issue 11.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx

from opsconsole.devserver import ConsoleServer

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
tools:
  allow: ["kb.read", "email.send"]
  definitions:
    email.send: {effect: write}
budgets: {max_steps: 1000000, max_seconds: 86400, max_tool_calls: 1000000}
loop: {max_repeats: 1000000}
writes: {require_approval: true, timeout_seconds: 3600}
"""
GOALS = {"p50": 2.0, "p99": 3.0, "throughput": 0.5, "approval_p99_ms": 50.0}


# --- the floor: no framework, one UPDATE ... RETURNING and one INSERT per decision ----------------

FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_budget (id bigserial PRIMARY KEY, used integer NOT NULL DEFAULT 0,
  cap integer NOT NULL DEFAULT 1000000000);
CREATE TABLE IF NOT EXISTS floor_event (id bigserial PRIMARY KEY, budget_id bigint NOT NULL,
  at timestamptz NOT NULL DEFAULT now(), data jsonb NOT NULL);
"""


class _Floor:
    pool = None


async def floor_app(scope, receive, send):
    """``POST /floor/{id}`` with a JSON body: spend one unit of budget ``id`` if it has one left
    and record an event, in one transaction; answers the new usage as JSON. ``POST /floor`` makes
    a budget; ``GET /healthz`` answers 200."""
    import json

    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool

    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if _Floor.pool is None:
        _Floor.pool = AsyncConnectionPool(
            os.environ["FLOOR_DSN"], min_size=2, max_size=16, open=False
        )
        await _Floor.pool.open()
    status, answer = 200, {"ok": True}
    path = scope["path"]
    if path == "/healthz":
        pass
    elif path == "/floor":
        async with _Floor.pool.connection() as conn:
            cursor = await conn.execute("INSERT INTO floor_budget DEFAULT VALUES RETURNING id")
            answer = {"id": (await cursor.fetchone())[0]}
    else:
        budget = int(path.rsplit("/", 1)[1])
        data = json.loads(body)
        async with _Floor.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE floor_budget SET used = used + 1 WHERE id = %s AND used < cap RETURNING used",
                [budget],
            )
            row = await cursor.fetchone()
            if row is None:
                answer = {"decision": "stop"}
            else:
                await conn.execute(
                    "INSERT INTO floor_event (budget_id, data) VALUES (%s, %s)",
                    [budget, Jsonb(data)],
                )
                answer = {"decision": "allow", "used": row[0]}
    payload = json.dumps(answer).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class FloorServer(ConsoleServer):
    """The floor under uvicorn, started and stopped as the console is."""

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("opsconsole.asgi:application")] = "bench.gateway:floor_app"
        return command


def bench_database_url(server_url: str) -> str:
    """``<the named database>_bench`` on the same server (dropped and created again)."""
    parsed = urlparse(server_url)
    return urlunparse(parsed._replace(path=f"{parsed.path.rstrip('/') or '/postgres'}_bench"))


def prepare(env: dict[str, str], admin_url: str) -> tuple[str, str]:
    """A fresh database with the policy, the bench agent's key and a reviewer's token."""
    import psycopg

    name = urlparse(env["DATABASE_URL"]).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    run("migrate", "-v0")
    with psycopg.connect(env["FLOOR_DSN"], autocommit=True) as conn:
        conn.execute(FLOOR_SCHEMA)
    script = (
        "from django.contrib.auth.models import Group, User;"
        "from agents.policy.document import parse_yaml;"
        "from agents.policy.services import policy_publish;"
        "from agents.registry.services import agent_create, agent_key_issue;"
        "from opsconsole import roles;"
        "from opsconsole.services import user_token_issue;"
        f"policy_publish(document=parse_yaml({POLICY!r}), author='system', reason='bench');"
        "a = agent_create(name='bench-bot', actor='system');"
        "u = User.objects.create_user(username='bench-reviewer', password='bench-Secret-1');"
        "u.groups.add(Group.objects.get(name=roles.REVIEWER));"
        "print(agent_key_issue(agent=a, actor='system')[1], user_token_issue(user=u, actor='system')[1])"
    )
    key, token = run("shell", "-c", script).stdout.strip().splitlines()[-1].split()
    return key, token


@dataclass
class Target:
    """Where decisions go: the console's tool-call URL, or the floor's."""

    name: str
    base: str
    headers: dict[str, str]

    async def new_run(self, client: httpx.AsyncClient) -> int:
        path = "/api/v1/runs" if self.name == "gateway" else "/floor"
        response = await client.post(path, json={"task": "bench"})
        response.raise_for_status()
        return response.json()["id"]

    async def decide(self, client: httpx.AsyncClient, run_id: int, i: int) -> float:
        path = f"/api/v1/runs/{run_id}/tool-calls" if self.name == "gateway" else f"/floor/{run_id}"
        started = time.perf_counter()
        response = await client.post(path, json={"tool": "kb.read", "args": {"i": i}})
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or response.json()["decision"] != "allow":
            raise RuntimeError(f"unexpected answer: {response.status_code} {response.text[:200]}")
        return elapsed


async def sequential(target: Target, count: int) -> list[float]:
    async with httpx.AsyncClient(base_url=target.base, headers=target.headers) as client:
        run_id = await target.new_run(client)
        for i in range(50):  # warm up connections and caches
            await target.decide(client, run_id, -i - 1)
        return [await target.decide(client, run_id, i) for i in range(count)]


async def concurrent(target: Target, clients: int, seconds: float) -> float:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=target.base, headers=target.headers, limits=limits, timeout=30
    ) as client:
        runs = [await target.new_run(client) for _ in range(clients)]
        for run_id in runs:  # every connection and every worker warm
            await target.decide(client, run_id, -1)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(run_id: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < deadline:
                await target.decide(client, run_id, i)
                i += 1
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(r) for r in runs))
        return done / (time.perf_counter() - started)


async def approvals(base: str, key: str, token: str, count: int) -> tuple[list[float], list[float]]:
    """Reviewer's decision request sent -> the agent's long poll answered, ``count`` times; and
    from the reviewer's answer (the decision committed) to the agent's."""
    agent = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    reviewer = httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    async with agent, reviewer:
        run_id = (await agent.post("/api/v1/runs", json={"task": "approvals"})).json()["id"]
        latencies, after_commit = [], []
        for i in range(count + 3):  # three unmeasured, to warm the listeners
            call = (
                await agent.post(
                    f"/api/v1/runs/{run_id}/tool-calls",
                    json={"tool": "email.send", "args": {"i": i}},
                )
            ).json()
            assert call["decision"] == "pending_approval", call
            answered: list[float] = []

            async def poll(call_id: int = call["id"], answered: list[float] = answered) -> None:
                response = await agent.get(f"/api/v1/tool-calls/{call_id}", params={"wait": 30})
                answered.append(time.perf_counter())
                assert response.json()["decision"] == "allow", response.text

            waiting = asyncio.ensure_future(poll())
            await asyncio.sleep(0.2)  # the poll has read the pending state and is waiting
            sent = time.perf_counter()
            decided = await reviewer.post(
                f"/api/v1/approvals/{call['approval']['id']}/decision", json={"verdict": "approve"}
            )
            decided_at = time.perf_counter()
            assert decided.status_code == 200, decided.text
            await waiting
            if i >= 3:
                latencies.append(answered[0] - sent)
                after_commit.append(answered[0] - decided_at)
        return latencies, after_commit


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * fraction) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="uvicorn worker processes (default 2)"
    )
    parser.add_argument(
        "--requests", type=int, default=1000, help="sequential decisions (default 1000)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10, help="seconds per concurrency level (default 10)"
    )
    parser.add_argument("--approvals", type=int, default=40, help="approvals per round (40)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repeat every measurement, report medians"
    )
    parser.add_argument(
        "--slow-path", action="store_true", help="the gateway without its fast path (Django only)"
    )
    args = parser.parse_args()

    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith("postgres"):
        sys.exit("Set DATABASE_URL=postgres://... (the floor is measured on PostgreSQL).")
    bench_url = bench_database_url(server_url)
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "FLOOR_DSN": bench_url.replace("postgres://", "postgresql://", 1),
        "OPSCONSOLE_LOG_LEVEL": "WARNING",
        # One bench agent makes thousands of calls: rate limits would measure themselves.
        "OPSCONSOLE_RATE_RUNS": "off",
        "OPSCONSOLE_RATE_TOOL_CALLS": "off",
        "OPSCONSOLE_GATEWAY_FAST_PATH": "false" if args.slow_path else "true",
    }
    env.pop("REDIS_URL", None)
    print(f"preparing database {urlparse(bench_url).path.lstrip('/')} ...", flush=True)
    key, token = prepare(env, server_url.replace("postgres://", "postgresql://", 1))
    server_env = {**env, "REDIS_URL": None, "OPSCONSOLE_EMBEDDED_SCHEDULER": "false"}
    console = ConsoleServer(env=server_env, workers=args.workers, stop_timeout=20)
    floor = FloorServer(env=server_env, workers=args.workers, stop_timeout=20)
    targets = [
        Target("gateway", console.url, {"Authorization": f"Bearer {key}"}),
        Target("floor", floor.url, {}),
    ]
    results: dict[str, dict[str, list[float]]] = {
        t.name: {"p50": [], "p99": [], "16": [], "64": []} for t in targets
    }
    approval_p50s, approval_p99s, wake_p50s, wake_p99s = [], [], [], []
    with console, floor:
        for round_ in range(1, args.repeat + 1):
            for target in targets:
                latencies = asyncio.run(sequential(target, args.requests))
                results[target.name]["p50"].append(statistics.median(latencies) * 1000)
                results[target.name]["p99"].append(percentile(latencies, 0.99) * 1000)
            for clients in (16, 64):
                for target in targets:
                    rate = asyncio.run(concurrent(target, clients, args.seconds))
                    results[target.name][str(clients)].append(rate)
            waits, wakes = asyncio.run(approvals(console.url, key, token, args.approvals))
            approval_p50s.append(statistics.median(waits) * 1000)
            approval_p99s.append(percentile(waits, 0.99) * 1000)
            wake_p50s.append(statistics.median(wakes) * 1000)
            wake_p99s.append(percentile(wakes, 0.99) * 1000)
            line = ", ".join(
                f"{t}: p50 {r['p50'][-1]:.2f} ms p99 {r['p99'][-1]:.2f} ms "
                f"{r['16'][-1]:.0f}/s@16 {r['64'][-1]:.0f}/s@64"
                for t, r in results.items()
            )
            print(
                f"round {round_}: {line}; approval -> agent p50 {approval_p50s[-1]:.1f} ms "
                f"p99 {approval_p99s[-1]:.1f} ms (after the reviewer's answer: p50 "
                f"{wake_p50s[-1]:.1f} ms p99 {wake_p99s[-1]:.1f} ms)",
                flush=True,
            )

    import psycopg

    with psycopg.connect(
        server_url.replace("postgres://", "postgresql://", 1), autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {urlparse(bench_url).path.lstrip('/')} WITH (FORCE)")

    gateway = {name: statistics.median(v) for name, v in results["gateway"].items()}
    bottom = {name: statistics.median(v) for name, v in results["floor"].items()}
    layout = "Django only (--slow-path)" if args.slow_path else "fast path on"
    print(
        f"\nmedians of {args.repeat} rounds, {args.workers} uvicorn workers each, PostgreSQL, "
        f"gateway {layout}; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'measure':<30}{'gateway':>10}{'floor':>10}{'ratio':>8}{'goal':>8}")
    for name, label, goal in (
        ("p50", "one agent p50 (ms)", f"<= {GOALS['p50']:.0f}x"),
        ("p99", "one agent p99 (ms)", f"<= {GOALS['p99']:.0f}x"),
    ):
        ratio = gateway[name] / bottom[name]
        print(f"{label:<30}{gateway[name]:>10.2f}{bottom[name]:>10.2f}{ratio:>7.2f}x{goal:>8}")
    for clients in ("16", "64"):
        ratio = gateway[clients] / bottom[clients]
        label = f"{clients} agents (decisions/s)"
        goal = f">= {GOALS['throughput']}x"
        print(
            f"{label:<30}{gateway[clients]:>10.0f}{bottom[clients]:>10.0f}{ratio:>7.2f}x{goal:>8}"
        )
    goal = f"<= {GOALS['approval_p99_ms']:.0f} ms"
    print(f"{'approval -> agent p50 (ms)':<30}{statistics.median(approval_p50s):>10.1f}")
    print(f"{'  reviewer answered -> agent p50':<30}{statistics.median(wake_p50s):>10.1f}")
    print(f"{'  reviewer answered -> agent p99':<30}{statistics.median(wake_p99s):>10.1f}")
    print(
        f"{'approval -> agent p99 (ms)':<30}{statistics.median(approval_p99s):>10.1f}{'':>18}{goal}"
    )


if __name__ == "__main__":
    main()
