"""Gateway decision latency and throughput, against the floor in the stack notes.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/gateway.py

It creates (and drops) its own database ``opsconsole_bench`` on that server, starts uvicorn with
``--workers`` processes, then measures tool-call decisions (POST /api/v1/runs/{id}/tool-calls):
one sequential client (p50/p99 latency) and 16 and 64 concurrent clients (decisions/s), each
client on its own run. Floor on this kind of machine (a bare ASGI app doing one budget UPDATE and
one INSERT): 2.9 ms p50, 4.8 ms p99 sequential; about 1,600 decisions/s at 16 and 64 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx

from opsconsole.devserver import ConsoleServer

ROOT = Path(__file__).resolve().parent.parent
FLOOR = {"p50_ms": 2.9, "p99_ms": 4.8, "per_second": 1600.0}
POLICY = """
tools:
  allow: ["kb.read"]
budgets: {max_steps: 1000000, max_seconds: 86400, max_tool_calls: 1000000}
loop: {max_repeats: 1000000}
"""


def bench_database_url(server_url: str) -> str:
    parsed = urlparse(server_url)
    return urlunparse(parsed._replace(path="/opsconsole_bench"))


def prepare(env: dict[str, str], admin_url: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS opsconsole_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE opsconsole_bench")
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    run("migrate", "-v0")
    script = (
        "from agents.policy.document import parse_yaml;"
        "from agents.policy.services import policy_publish;"
        "from agents.registry.services import agent_create, agent_key_issue;"
        f"policy_publish(document=parse_yaml({POLICY!r}), author='system', reason='bench');"
        "a = agent_create(name='bench-bot', actor='system');"
        "print(agent_key_issue(agent=a, actor='system')[1])"
    )
    return run("shell", "-c", script).stdout.strip().splitlines()[-1]


async def new_run(client: httpx.AsyncClient) -> int:
    response = await client.post("/api/v1/runs", json={"task": "bench"})
    response.raise_for_status()
    return response.json()["id"]


async def decide(client: httpx.AsyncClient, run_id: int, i: int) -> float:
    started = time.perf_counter()
    response = await client.post(
        f"/api/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "args": {"i": i}}
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or response.json()["decision"] != "allow":
        raise RuntimeError(f"unexpected answer: {response.status_code} {response.text[:200]}")
    return elapsed


async def sequential(base: str, key: str, count: int) -> list[float]:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        run_id = await new_run(client)
        for i in range(50):  # warm up connections and caches
            await decide(client, run_id, -i - 1)
        return [await decide(client, run_id, i) for i in range(count)]


async def concurrent(base: str, key: str, clients: int, seconds: float) -> float:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30
    ) as client:
        runs = [await new_run(client) for _ in range(clients)]
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(run_id: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < deadline:
                await decide(client, run_id, i)
                i += 1
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(r) for r in runs))
        return done / (time.perf_counter() - started)


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
    parser.add_argument(
        "--repeat", type=int, default=3, help="repeat every measurement, report medians"
    )
    args = parser.parse_args()

    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith("postgres"):
        sys.exit("Set DATABASE_URL=postgres://... (the floor is measured on PostgreSQL).")
    env = {
        **os.environ,
        "DATABASE_URL": bench_database_url(server_url),
        "OPSCONSOLE_LOG_LEVEL": "WARNING",
        # One bench agent makes thousands of calls: rate limits would measure themselves.
        "OPSCONSOLE_RATE_RUNS": "off",
        "OPSCONSOLE_RATE_TOOL_CALLS": "off",
    }
    env.pop("REDIS_URL", None)
    print("preparing database opsconsole_bench ...", flush=True)
    key = prepare(env, server_url.replace("postgres://", "postgresql://", 1))
    server = ConsoleServer(
        env={**env, "REDIS_URL": None, "OPSCONSOLE_EMBEDDED_SCHEDULER": "false"},
        workers=args.workers,
        stop_timeout=20,
    )
    base = server.url
    with server:
        p50s, p99s = [], []
        rates: dict[int, list[float]] = {16: [], 64: []}
        for round_ in range(1, args.repeat + 1):
            latencies = sorted(asyncio.run(sequential(base, key, args.requests)))
            p50s.append(statistics.median(latencies) * 1000)
            p99s.append(latencies[int(len(latencies) * 0.99) - 1] * 1000)
            print(
                f"round {round_}: sequential p50 {p50s[-1]:.2f} ms, p99 {p99s[-1]:.2f} ms",
                flush=True,
            )
            for clients in rates:
                rates[clients].append(asyncio.run(concurrent(base, key, clients, args.seconds)))
                print(
                    f"round {round_}: {clients} clients {rates[clients][-1]:.0f} decisions/s",
                    flush=True,
                )

    p50, p99 = statistics.median(p50s), statistics.median(p99s)
    print(f"\nmedians of {args.repeat} rounds, {args.workers} uvicorn workers, PostgreSQL")
    print(f"{'measure':<28}{'gateway':>12}{'floor':>12}{'ratio':>10}")
    print(
        f"{'sequential p50 (ms)':<28}{p50:>12.2f}{FLOOR['p50_ms']:>12.2f}{p50 / FLOOR['p50_ms']:>9.1f}x"
    )
    print(
        f"{'sequential p99 (ms)':<28}{p99:>12.2f}{FLOOR['p99_ms']:>12.2f}{p99 / FLOOR['p99_ms']:>9.1f}x"
    )
    for clients, values in rates.items():
        rate = statistics.median(values)
        label = f"{clients} clients (decisions/s)"
        print(
            f"{label:<28}{rate:>12.0f}{FLOOR['per_second']:>12.0f}{FLOOR['per_second'] / rate:>9.1f}x"
        )


if __name__ == "__main__":
    main()
