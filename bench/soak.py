"""Soak: the demo fleet at a high rate for N minutes, a fault every few minutes, then the invariants.

    .venv/bin/python bench/soak.py --minutes 10 --fault-every 120

It starts its *own* PostgreSQL cluster (initdb in a temporary folder, as the ``postgres`` OS user
when run as root) and its own redis-server, each on a free port, and the console with uvicorn
(opsconsole/devserver.py); the shared servers are never touched. While the fleet runs
(agents/demo/fleet.py, through the Python client, as real agents would), a probe agent asks for
one decision every 0.2 s, and faults are injected in turn: PostgreSQL stopped (immediate), Redis stopped, the console process killed
(SIGKILL) and restarted, the kill switch set to ``stop_all``; each lasts ``--fault-seconds``.
At the end it checks, on the database:

- no run's counter is past its budget;
- every ended run has exactly one valid stop reason, and no active run has one;
- no tool call is allowed whose approval was rejected, expired or cancelled;
- each run's tool_calls equals its counted tool calls (no retry spent twice);
- no tool call was allowed while the kill switch was ``stop_all``;
- the audit chain verifies;

and prints a summary (runs, stop reasons, decisions, the probe's answers during and after each
fault, time to recover). Exit status 1 if an invariant fails or the console did not recover.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from opsconsole.devserver import ConsoleServer, free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class OwnPostgres:
    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            sys.exit("soak: PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are missing")
        self.bindir = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="opsconsole-soak-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.port = free_port()

    def _run(self, *args: str, check: bool = True) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], capture_output=True, check=check, timeout=120)

    def init(self) -> None:
        data = str(self.root / "data")
        self._run(str(self.bindir / "initdb"), "-D", data, "-U", "postgres", "-A", "trust")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self, check: bool = True) -> None:
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(
            pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop", check=check
        )

    def cleanup(self) -> None:
        self.stop(check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class OwnRedis:
    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or sys.exit("soak: redis-server is missing")
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class Probe:
    """One decision every 0.2 s; remembers (time, status) of each."""

    base: str
    key: str
    answers: list[tuple[float, int]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        run_id = None
        n = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            status = 0
            try:
                with httpx.Client(
                    base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=10
                ) as client:
                    if run_id is None:
                        response = client.post("/api/v1/runs", json={"task": "probe"})
                        if response.status_code == 201:
                            run_id = response.json()["id"]
                        status = response.status_code
                    else:
                        n += 1
                        response = client.post(
                            f"/api/v1/runs/{run_id}/tool-calls",
                            json={"tool": "kb.read", "args": {"n": n}},
                        )
                        status = response.status_code
                        if status == 200 and response.json()["decision"] != "allow":
                            run_id, status = None, 299  # a stop (e.g. stop_all): start anew
            except httpx.HTTPError:
                status = 0
            self.answers.append((started, status))
            self.stopping.wait(max(0.0, 0.2 - (time.monotonic() - started)))


def with_fresh_connections(work):
    """Run ``work`` on the database; pooled connections from before a PostgreSQL restart are
    dead, so a failure is retried on fresh ones."""
    from django.db import OperationalError, connections

    for attempt in range(5):
        connections.close_all()
        try:
            return work()
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(1)
    return None


def check_invariants(kill_windows: list[tuple[float, float]]) -> list[str]:
    from django.db.models import Count, F, Q

    from agents import stop_reasons
    from agents.models import Run, ToolCall
    from opsconsole.audit import verify_chain

    problems = []
    for budget, counter in (
        ("max_steps", "steps"),
        ("max_tool_calls", "tool_calls"),
        ("max_tokens", "tokens"),
        ("max_usd", "usd"),
    ):
        over = Run.objects.filter(**{f"{budget}__isnull": False, f"{counter}__gt": F(budget)})
        if over.exists():
            problems.append(f"{over.count()} runs past {budget}")
    for status, reason in Run.objects.values_list("status", "stop_reason").distinct():
        active = status in ("running", "waiting_approval")
        if (active and reason) or (not active and not stop_reasons.is_valid(reason)):
            problems.append(f"run status {status} with stop reason {reason!r}")
    closed = ToolCall.objects.filter(
        approval__status__in=["rejected", "expired", "cancelled"], decision="allow"
    )
    if closed.exists():
        problems.append(f"{closed.count()} tool calls allowed after a closed approval")
    miscounted = Run.objects.annotate(
        counted=Count("tool_call_set", filter=Q(tool_call_set__counted=True))
    ).exclude(tool_calls=F("counted"))
    if miscounted.exists():
        problems.append(f"{miscounted.count()} runs whose tool_calls differ from counted calls")
    from django.utils import timezone

    now_wall, now_mono = timezone.now(), time.monotonic()
    for start, end in kill_windows:
        # Allowed calls created while stop_all was on (1 s of slack at each edge).
        window = ToolCall.objects.filter(
            decision="allow",
            created_at__gt=now_wall - timezone.timedelta(seconds=now_mono - start - 1),
            created_at__lt=now_wall - timezone.timedelta(seconds=now_mono - end + 1),
        )
        if window.exists():
            problems.append(f"{window.count()} calls allowed while the kill switch was stop_all")
    report = verify_chain()
    if not report.ok:
        problems.append(f"audit chain broken at row {report.first_bad_id}: {report.problem}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fault-every", type=float, default=120.0, help="seconds between faults")
    parser.add_argument("--fault-seconds", type=float, default=10.0, help="how long each lasts")
    parser.add_argument("--pace", type=float, default=0.05, help="fleet pace scale (lower: faster)")
    args = parser.parse_args()

    postgres, redis_server = OwnPostgres(), OwnRedis()
    data_dir = Path(tempfile.mkdtemp(prefix="opsconsole-soak-"))
    postgres.init()
    postgres.start()
    redis_server.start()
    import psycopg

    with psycopg.connect(
        f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres", autocommit=True
    ) as conn:
        conn.execute("CREATE DATABASE opsconsole_soak")
    os.environ.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{postgres.port}/opsconsole_soak",
        REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0",
        OPSCONSOLE_DATA_DIR=str(data_dir),
        OPSCONSOLE_DB_POOL_TIMEOUT="2",
        OPSCONSOLE_DB_CONNECT_TIMEOUT="2",
        OPSCONSOLE_RATE_RUNS="off",
        OPSCONSOLE_RATE_TOOL_CALLS="off",
        OPSCONSOLE_EMBEDDED_SCHEDULER="true",
        DJANGO_SETTINGS_MODULE="opsconsole.settings",
    )
    import django

    django.setup()
    from agents.demo.fleet import Fleet
    from agents.demo.world import prepare
    from agents.registry.services import agent_create, agent_key_issue

    world = prepare()
    probe_agent = agent_create(name="soak-probe", actor="system")
    probe_key = agent_key_issue(agent=probe_agent, actor="system")[1]
    admin_token = next(u.token for u in world.users if u.role == "admin")

    server = ConsoleServer()
    server.start()
    server.wait_healthy()
    lines: list[str] = []
    fleet = Fleet(
        server.url, world.agent_keys, lines.append, pause_seconds=(0.1, 0.3), pace_scale=args.pace
    )
    probe = Probe(server.url, probe_key)
    probe_thread = threading.Thread(target=probe.run, daemon=True)
    fleet.start()
    probe_thread.start()

    def kill_switch(mode: str) -> None:
        httpx.put(
            f"{server.url}/api/v1/kill-switch",
            json={"mode": mode, "reason": "soak fault" if mode != "off" else ""},
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=10,
        )

    faults = [
        ("postgres stopped", postgres.stop, postgres.start),
        ("redis stopped", redis_server.stop, redis_server.start),
        (
            "console killed",
            server.kill,
            lambda: (server.start(), server.wait_healthy()),
        ),
        ("kill switch stop_all", lambda: kill_switch("stop_all"), lambda: kill_switch("off")),
    ]
    windows: list[tuple[str, float, float]] = []
    started = time.monotonic()
    deadline = started + args.minutes * 60
    next_fault = started + min(args.fault_every, args.minutes * 30)
    index = 0
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            # A fault only if there is time left to see the recovery after it.
            room = args.fault_seconds + 20
            if time.monotonic() >= next_fault and time.monotonic() + room < deadline:
                name, inject, heal = faults[index % len(faults)]
                index += 1
                print(f"[{time.monotonic() - started:6.0f} s] fault: {name}", flush=True)
                begin = time.monotonic()
                inject()
                time.sleep(args.fault_seconds)
                heal()
                windows.append((name, begin, time.monotonic()))
                next_fault = time.monotonic() + args.fault_every
    finally:
        fleet.stop()
        probe.stopping.set()
        probe_thread.join(timeout=15)
        kill_windows = [(b, e) for n, b, e in windows if n.startswith("kill switch")]
        problems: list[str] = []
        try:
            problems = with_fresh_connections(lambda: check_invariants(kill_windows))
            with_fresh_connections(lambda: summary(lines, probe, windows, started, problems))
        except Exception as exc:  # noqa: BLE001 - report, then clean up whatever happened
            problems.append(f"the checks failed: {type(exc).__name__}: {exc}")
            print("soak: " + problems[-1])
        finally:
            server.stop()
            redis_server.stop()
            postgres.cleanup()
            shutil.rmtree(data_dir, ignore_errors=True)
    return 1 if problems else 0


def summary(lines, probe: Probe, windows, started: float, problems: list[str]) -> None:
    from agents.models import Run, ToolCall

    elapsed = time.monotonic() - started
    reasons = collections.Counter(
        Run.objects.exclude(stop_reason="").values_list("stop_reason", flat=True)
    )
    decisions = ToolCall.objects.count()
    print(f"\nsoak: {elapsed / 60:.1f} min, {len(lines)} fleet runs finished")
    print(
        f"  runs in the database: {Run.objects.count()}, tool-call decisions: {decisions} "
        f"({decisions / elapsed:.1f}/s)"
    )
    print("  stop reasons: " + ", ".join(f"{r} {n}" for r, n in reasons.most_common()))
    ok = sum(1 for _, s in probe.answers if s == 200)
    print(f"  probe: {len(probe.answers)} decisions, {ok} answered 200")
    for name, begin, end in windows:
        during = [s for t, s in probe.answers if begin + 0.5 <= t <= end]
        after = [t for t, s in probe.answers if t > end and s == 200]
        recovery = f"{after[0] - end:.1f} s" if after else "never"
        print(
            f"  fault {name!r}: probe during: {dict(collections.Counter(during))}; "
            f"first 200 after: {recovery}"
        )
        if not after:
            problems.append(f"no recovery after {name}")
    print("  invariants: " + ("all hold" if not problems else "; ".join(problems)))


if __name__ == "__main__":
    sys.exit(main())
