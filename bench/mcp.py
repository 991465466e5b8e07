"""What the console's MCP endpoint adds to a ``tools/call``, measured side by side in one run.

    .venv/bin/python bench/mcp.py                                   # SQLite in a temporary dir
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/mcp.py \
        --database opsconsole_mcp_bench                             # drops and creates it

It starts a real upstream MCP server (``tests/mcp/upstream.py`` over Streamable HTTP) and the
console (``uvicorn opsconsole.asgi:application``, one worker) with that upstream registered as
``up``, then, with the official SDK's client, measures in rounds that interleave the targets:

- ``tools/call`` straight to the upstream (the floor);
- the same call through the console's ``/mcp`` (decided, forwarded, result reported and
  validated), for a read (``up.search``) and a write (``up.send``, no approval), in both
  protocol eras (2025-11-25 handshake, stateless 2026-07-28);
- the gateway's own HTTP decision (``POST /api/v1/runs/{id}/tool-calls``) for the same read.

Every target is measured twice: back to back (the next call sent the moment the last answer
came) and paced (``--pause-ms`` between calls, as an agent waits for its model). Back to back, a
call through the console also shares the CPU and the run's row with the previous call's result
being recorded (the console answers first and records after); paced, each call is measured on
its own, as the HTTP decision is (which records no result).

It prints p50 and p99 per target (medians over the rounds), what the console adds over the
direct call, and the goal for each: added p50 <= the HTTP decision's p50 + 2 ms, and added p99 <=
its p99 + 2 ms (the ratio printed is added / that bound).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on the path and its name would hide the SDK's
# ``mcp`` package: the repository root takes its place.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import httpx  # noqa: E402
import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from opsconsole.devserver import ConsoleServer, free_port, spawn, stop_group  # noqa: E402

POLICY = """
tools:
  allow: ["up.search", "up.send", "kb.read"]
  definitions:
    up.search: {effect: read}
    up.send: {effect: write, approval: {required: false}}
budgets: {max_steps: 1000000, max_seconds: 86400, max_tool_calls: 1000000}
loop: {max_repeats: 1000000}
mcp:
  servers:
    up: {url: "UPSTREAM_URL", refresh_seconds: 3600}
"""
ERAS = {"handshake": "legacy", "stateless": "2026-07-28"}
GOAL_MARGIN_MS = 2.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * fraction) - 1)]


def prepare(env: dict[str, str]) -> str:
    """Migrate, publish the policy, create the bench agent; returns its key."""

    def run(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    run("migrate", "-v0")
    script = (
        "from agents.policy.document import parse_yaml;"
        "from agents.policy.services import policy_publish;"
        "from agents.registry.services import agent_create, agent_key_issue;"
        f"policy_publish(document=parse_yaml({env['BENCH_POLICY']!r}), author='system', reason='bench');"
        "a = agent_create(name='bench-bot', actor='system');"
        "print(agent_key_issue(agent=a, actor='system')[1])"
    )
    return run("shell", "-c", script).strip().splitlines()[-1]


async def mcp_calls(
    url: str,
    headers: dict[str, str],
    era: str,
    tool: str,
    count: int,
    warmup: int,
    pause: float = 0.0,
) -> list[float]:
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300))
    async with (
        http,
        Client(streamable_http_client(url, http_client=http), mode=ERAS[era], cache=None) as client,
    ):
        await client.list_tools()
        args = {"query": "refunds"} if tool.endswith("search") else {"to": "a@b.c", "body": "hi"}
        latencies = []
        for i in range(warmup + count):
            if pause:
                await asyncio.sleep(pause)
            started = time.perf_counter()
            result = await client.call_tool(tool, args)
            elapsed = time.perf_counter() - started
            if result.is_error:
                raise RuntimeError(f"{tool}: {result.content}")
            if i >= warmup:
                latencies.append(elapsed)
        return latencies


async def http_decisions(
    base: str, key: str, count: int, warmup: int, pause: float = 0.0
) -> list[float]:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        run = (await client.post("/api/v1/runs", json={"task": "bench"})).json()["id"]
        latencies = []
        for i in range(warmup + count):
            if pause:
                await asyncio.sleep(pause)
            started = time.perf_counter()
            response = await client.post(
                f"/api/v1/runs/{run}/tool-calls", json={"tool": "kb.read", "args": {"i": i}}
            )
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or response.json()["decision"] != "allow":
                raise RuntimeError(response.text[:200])
            if i >= warmup:
                latencies.append(elapsed)
        return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="calls per target and round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument(
        "--pause-ms", type=float, default=10.0, help="between calls, when paced (0: once only)"
    )
    parser.add_argument(
        "--database", default="opsconsole_mcp_bench", help="PostgreSQL database to (re)create"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/mcp"
    env = {
        **os.environ,
        "OPSCONSOLE_DATA_DIR": str(workdir),
        "OPSCONSOLE_LOG_LEVEL": "WARNING",
        "OPSCONSOLE_RATE_RUNS": "off",
        "OPSCONSOLE_RATE_TOOL_CALLS": "off",
        "BENCH_POLICY": POLICY.replace("UPSTREAM_URL", upstream_url),
    }
    env.pop("REDIS_URL", None)
    server_url = os.environ.get("DATABASE_URL", "")
    if server_url.startswith("postgres"):
        import psycopg

        admin = server_url.replace("postgres://", "postgresql://", 1)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{args.database}"')
        env["DATABASE_URL"] = urlunparse(urlparse(server_url)._replace(path=f"/{args.database}"))
    database = "PostgreSQL" if server_url.startswith("postgres") else "SQLite"
    print(f"preparing the console on {database} ...", flush=True)
    key = prepare(env)
    upstream = spawn(
        [
            sys.executable,
            "-m",
            "tests.mcp.upstream",
            "--dir",
            str(workdir),
            "--port",
            str(upstream_port),
        ],
        log=workdir / "upstream.log",
    )
    console = ConsoleServer(
        env={**env, "OPSCONSOLE_EMBEDDED_SCHEDULER": "false"}, log=workdir / "console.log"
    )
    targets = [
        (f"{name} {era}", url, era, tool)
        for era in ERAS
        for name, tool, url in (
            ("direct read", "search", upstream_url),
            ("console read", "up.search", None),
            ("direct write", "send", upstream_url),
            ("console write", "up.send", None),
        )
    ]
    paces = {"back to back": 0.0}
    if args.pause_ms > 0:
        paces[f"paced, {args.pause_ms:g} ms between calls"] = args.pause_ms / 1000
    results: dict[str, dict[str, dict[str, list[float]]]] = {pace: {} for pace in paces}
    try:
        with console:
            mcp_url = f"{console.url}/mcp"
            headers = {"Authorization": f"Bearer {key}"}
            for round_ in range(1, args.repeat + 1):
                for pace, pause in paces.items():
                    for name, url, era, tool in targets:
                        latencies = asyncio.run(
                            mcp_calls(
                                url or mcp_url,
                                {} if url else headers,
                                era,
                                tool,
                                args.calls,
                                args.warmup,
                                pause,
                            )
                        )
                        entry = results[pace].setdefault(name, {"p50": [], "p99": []})
                        entry["p50"].append(statistics.median(latencies) * 1000)
                        entry["p99"].append(percentile(latencies, 0.99) * 1000)
                    latencies = asyncio.run(
                        http_decisions(console.url, key, args.calls, args.warmup, pause)
                    )
                    entry = results[pace].setdefault("http decision", {"p50": [], "p99": []})
                    entry["p50"].append(statistics.median(latencies) * 1000)
                    entry["p99"].append(percentile(latencies, 0.99) * 1000)
                print(f"round {round_} done", flush=True)
    finally:
        stop_group(upstream)

    for pace in paces:
        report(pace, results[pace])
    print(
        f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )


def report(pace: str, results: dict[str, dict[str, list[float]]]) -> None:
    """The medians per target, then what the console adds over the direct call, each quantile
    judged against the same quantile of the HTTP decision plus ``GOAL_MARGIN_MS``."""
    medians = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    print(f"\n{pace}\n{'target':28} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in medians.items():
        print(f"{name:28} {row['p50']:8.2f} {row['p99']:8.2f}")
    decision = medians["http decision"]
    bound = {q: decision[q] + GOAL_MARGIN_MS for q in ("p50", "p99")}
    print(
        f"the gateway's HTTP decision: p50 {decision['p50']:.2f} ms, p99 {decision['p99']:.2f} ms; "
        f"goal: added p50 <= {bound['p50']:.2f} ms, added p99 <= {bound['p99']:.2f} ms"
    )
    for era in ERAS:
        for kind in ("read", "write"):
            direct, via = medians[f"direct {kind} {era}"], medians[f"console {kind} {era}"]
            parts = []
            for q in ("p50", "p99"):
                added = via[q] - direct[q]
                verdict = "meets" if added <= bound[q] else "misses"
                parts.append(f"{q} {added:6.2f} ms ({added / bound[q]:.2f}x, {verdict})")
            print(f"added {kind:5} {era:9}: {', '.join(parts)}")


if __name__ == "__main__":
    main()
