"""OTLP trace ingestion end to end: spans per second until queryable in the runs list.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<database> \\
        .venv/bin/python bench/otlp.py [--runs 1000] [--reps 3] [--workers 2]

Migrates the database of ``DATABASE_URL`` (PostgreSQL; created when missing), creates an on-call login and, per
repetition, a fresh agent with a key; starts the console (uvicorn, ``--workers`` processes,
``REDIS_URL`` as set) and, in a child process, the load generator: the OpenTelemetry SDK's
``BatchSpanProcessor`` (queue 100,000, batches of 512, 500 ms delay) and its OTLP/HTTP protobuf
exporter, configured only by ``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``OTEL_EXPORTER_OTLP_HEADERS``
as docs/telemetry.md tells users. The workload is agent-shaped: per run one ``invoke_agent``
span, ten ``chat`` spans (tokens, 500/200-character input/output) and twenty ``execute_tool``
spans (arguments, result), dual-emitting GenAI and OpenInference attributes, all in one trace
(the same workload as the Phoenix measurement in the research notes: about 81 spans/s).

Measured per repetition:

- **end to end**: from starting the generator until every span is stored and every run has
  ended (its root arrived), polled every 0.2 s in the database the runs list reads; spans/s is
  the span count over that time; nothing lost = every span stored, every export answered 200;
- **server CPU** (user + system of the uvicorn processes, from /proc) over that window, in cores,
  and per span; the generator's CPU apart; PostgreSQL's processes apart (shared with whatever
  else runs on the machine; each followed from its first to its last sample, so a backend that
  ends or starts during the window is counted and the figure is never negative);
- **server peak RSS** (the sum over its processes, sampled every 0.1 s);
- **runs list latency while ingesting**: a logged-in on-call engineer's ``GET /runs/`` (the
  first page, newest first) and ``GET /runs/?source=otlp`` over real HTTP, once every
  ``--browse-interval`` seconds (1: a page refreshing live) for the whole window (goal, issue 3:
  p99 < 100 ms).

Goal (issue 16): at least 1,000 spans/s end to end on a 2-core machine with nothing lost, and
the runs list within its latency goal meanwhile. The script prints medians over ``--reps``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opsconsole.devserver import ConsoleServer  # noqa: E402

USERNAME = "bench-otlp-oncall"
SPANS_PER_RUN = 31
PAGES = ("/runs/", "/runs/?source=otlp")  # the runs list, loaded while ingesting
TOOLS = ["kb.read", "search.read", "http.get", "crm.lookup", "email.send"]


# --- the load generator (a child process) ------------------------------------------------------


def generate(runs: int, rate: float = 0.0) -> None:
    """Send ``runs`` agent runs through the OTel SDK exporter (paced at ``rate`` spans/s when it
    is not 0); print what the exports returned."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

    exporter = OTLPSpanExporter()
    outcomes = {"ok": 0, "failed": 0}
    export = exporter.export

    def counted(spans: Any) -> SpanExportResult:
        result = export(spans)
        outcomes["ok" if result == SpanExportResult.SUCCESS else "failed"] += 1
        return result

    exporter.export = counted  # type: ignore[method-assign]
    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=100_000,
            max_export_batch_size=512,
            schedule_delay_millis=500,
        )
    )
    tracer = provider.get_tracer("bench.otlp")
    prompt, completion = "p" * 500, "c" * 200
    started = time.monotonic()
    for number in range(runs):
        with tracer.start_as_current_span("invoke_agent support-agent") as agent_span:
            agent_span.set_attribute("gen_ai.operation.name", "invoke_agent")
            agent_span.set_attribute("gen_ai.agent.name", "support-agent")
            agent_span.set_attribute("openinference.span.kind", "AGENT")
            agent_span.set_attribute("input.value", f"ticket {number}: where is my refund?")
            agent_span.set_attribute("gen_ai.conversation.id", f"conv-{number}")
            for turn in range(10):
                with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
                    chat.set_attribute("gen_ai.operation.name", "chat")
                    chat.set_attribute("gen_ai.provider.name", "openai")
                    chat.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                    chat.set_attribute("gen_ai.usage.input_tokens", 1000 + turn)
                    chat.set_attribute("gen_ai.usage.output_tokens", 100)
                    chat.set_attribute("openinference.span.kind", "LLM")
                    chat.set_attribute("llm.model_name", "gpt-4o-mini")
                    chat.set_attribute("llm.token_count.prompt", 1000 + turn)
                    chat.set_attribute("llm.token_count.completion", 100)
                    chat.set_attribute("input.value", prompt)
                    chat.set_attribute("output.value", completion)
                for call in range(2):
                    tool = TOOLS[(turn * 2 + call) % len(TOOLS)]
                    with tracer.start_as_current_span(f"execute_tool {tool}") as span:
                        span.set_attribute("gen_ai.operation.name", "execute_tool")
                        span.set_attribute("gen_ai.tool.name", tool)
                        span.set_attribute("gen_ai.tool.call.id", f"call_{turn}_{call}")
                        span.set_attribute("openinference.span.kind", "TOOL")
                        span.set_attribute("tool.name", tool)
                        span.set_attribute("input.value", json.dumps({"q": f"{number}-{turn}"}))
                        span.set_attribute("output.value", json.dumps({"hits": 3}))
        if rate:
            time.sleep(max(0.0, started + (number + 1) * SPANS_PER_RUN / rate - time.monotonic()))
    created = time.monotonic() - started
    provider.force_flush(timeout_millis=600_000)
    provider.shutdown()
    print(
        json.dumps(
            {**outcomes, "created_seconds": created, "sent_seconds": time.monotonic() - started}
        ),
        flush=True,
    )


# --- measuring ----------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def processes(*, session: int | None = None, name: str | None = None) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields is None:
            continue
        if session is not None and int(fields[3]) == session:
            found.append(int(entry.name))
        elif name is not None:
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = proc_stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


class ProcessCpu:
    """CPU used by processes of one name (PostgreSQL's backends) over a window, never negative.

    Summing the named processes' CPU at the start and at the end goes wrong when a process
    ends in between (its CPU leaves the sum, which can then fall) or starts in between. Each
    process is followed instead, by pid and start time (a pid can be reused), from its first
    sample to its last (``sample()`` is called every 0.1 s during the window): one that ends
    loses at most its last interval, one that starts counts from zero.
    """

    def __init__(self, name: str):
        self.name = name
        self.first = self._read()
        self.last = dict(self.first)

    def _read(self) -> dict[tuple[int, int], float]:
        ticks = os.sysconf("SC_CLK_TCK")
        seen = {}
        for pid in processes(name=self.name):
            fields = proc_stat(pid)
            if fields is not None:
                seen[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / ticks
        return seen

    def sample(self) -> None:
        self.last.update(self._read())

    def seconds(self) -> float:
        return sum(max(0.0, cpu - self.first.get(key, 0.0)) for key, cpu in self.last.items())


def rss_mib(pids: list[int]) -> float:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        fields = proc_stat(pid)
        if fields is not None:
            total += int(fields[21]) * page
    return total / 2**20


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@dataclass
class Result:
    spans: int
    stored: int
    runs_ended: int
    seconds: float
    first_queryable: float
    client: dict[str, Any]
    server_cpu: float
    client_cpu: float
    postgres_cpu: float
    peak_rss: float
    idle_rss: float
    list_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.stored / self.seconds


def ensure_database(url: str) -> None:
    """Create the database of ``url`` on its server when it does not exist yet."""
    from urllib.parse import urlparse, urlunparse

    import psycopg
    from psycopg import sql

    name = urlparse(url).path.lstrip("/")
    server = urlunparse(urlparse(url)._replace(path="/postgres"))
    with psycopg.connect(server, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            print(f"creating database {name} ...", flush=True)
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def django_setup(url: str, data_dir: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["OPSCONSOLE_DATA_DIR"] = data_dir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsconsole.settings")
    import django

    django.setup()


def prepare(rep: int) -> tuple[str, int, str, str]:
    """(agent name, agent id, its key, the on-call password)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from agents.registry import services as registry_services
    from opsconsole import roles
    from opsconsole.services import user_create

    call_command("migrate", interactive=False, verbosity=0)
    # Fresh planner statistics, as autovacuum keeps them in production (a server that has it
    # off would plan the runs list for the empty table of the first repetition).
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    exists = get_user_model().objects.filter(username=USERNAME).exists()
    password = user_create(username=USERNAME, role=roles.ONCALL, actor="system", reset=exists)
    name = f"otlp-bench-{int(time.time())}-{rep}"
    agent = registry_services.agent_create(name=name, actor="system")
    _, key = registry_services.agent_key_issue(agent=agent, actor="system")
    return name, agent.pk, key, password.password


def counts(agent_id: int) -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM agents_observedspan s JOIN agents_run r ON r.id = s.run_id "
            "WHERE r.agent_id = %s",
            [agent_id],
        )
        spans = cursor.fetchone()[0]
        cursor.execute(
            "SELECT count(*) FROM agents_run WHERE agent_id = %s AND status <> 'running'",
            [agent_id],
        )
        ended = cursor.fetchone()[0]
    return spans, ended


def log_in(base: str, password: str) -> Any:
    import re

    import httpx

    client = httpx.Client(base_url=base, timeout=30)
    page = client.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token is not None, "no CSRF token on the login page"
    answer = client.post(
        "/login/",
        data={"username": USERNAME, "password": password, "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{base}/login/"},
    )
    assert answer.status_code == 302, f"login failed: HTTP {answer.status_code}"
    return client


def one_rep(args: argparse.Namespace, rep: int, url: str, log_dir: Path) -> Result:
    name, agent_id, key, password = prepare(rep)
    expected = args.runs * SPANS_PER_RUN
    env = {"DATABASE_URL": url, "OPSCONSOLE_DATA_DIR": os.environ["OPSCONSOLE_DATA_DIR"]}
    server = ConsoleServer(env=env, workers=args.workers, log=log_dir / f"uvicorn-{rep}.log")
    with server:
        assert server.process is not None
        tree = processes(session=server.process.pid)
        time.sleep(1.0)
        idle_rss = rss_mib(tree)
        browser = log_in(server.url, password)
        browser.get("/runs/")  # warm
        idle_list = []  # the same page with no ingestion running: what the machine itself costs
        for _ in range(10):
            started_at = time.perf_counter()
            browser.get("/runs/")
            idle_list.append((time.perf_counter() - started_at) * 1000)
        postgres = ProcessCpu("postgres")
        cpu_before = cpu_seconds(tree)
        stop = threading.Event()
        peak = [idle_rss]
        lists: dict[str, list[float]] = {page: [] for page in PAGES}

        def sample() -> None:
            while not stop.wait(0.1):
                peak[0] = max(peak[0], rss_mib(tree))
                postgres.sample()

        def browse() -> None:
            while not stop.is_set():
                for path, times in lists.items():
                    started = time.perf_counter()
                    response = browser.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.status_code
                stop.wait(args.browse_interval)

        threads = [threading.Thread(target=sample), threading.Thread(target=browse)]
        client_env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": server.url,
            "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer%20{key}",
        }
        started = time.monotonic()
        generator = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--generate",
                "--runs",
                str(args.runs),
                "--rate",
                str(args.rate),
            ],
            env=client_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for thread in threads:
            thread.start()
        first = float("nan")
        stored = ended = 0
        while time.monotonic() - started < args.timeout:
            stored, ended = counts(agent_id)
            if stored and first != first:
                first = time.monotonic() - started
            if stored >= expected and ended >= args.runs:
                break
            time.sleep(0.2)
        seconds = time.monotonic() - started
        server_cpu = cpu_seconds(tree) - cpu_before
        postgres.sample()
        postgres_cpu = postgres.seconds()
        stop.set()
        for thread in threads:
            thread.join()
        _children_cpu()  # what earlier children (a previous server) used: not the generator's
        output, _ = generator.communicate(timeout=600)
        client_cpu = _children_cpu()
        client = json.loads(output.strip().splitlines()[-1]) if output.strip() else {}
    print(
        f"  rep {rep + 1}: {stored}/{expected} spans, {ended}/{args.runs} runs ended in "
        f"{seconds:.1f} s = {stored / seconds:,.0f} spans/s; exports {client}",
        flush=True,
    )
    return Result(
        spans=expected,
        stored=stored,
        runs_ended=ended,
        seconds=seconds,
        first_queryable=first,
        client=client,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        postgres_cpu=postgres_cpu,
        peak_rss=peak[0],
        idle_rss=idle_rss,
        list_ms={**lists, "idle": idle_list},
    )


_children_seen = [0.0]


def _children_cpu() -> float:
    """CPU of the generator just reaped (this process's children, less earlier ones)."""
    usage = os.times()
    total = usage.children_user + usage.children_system
    spent, _children_seen[0] = total - _children_seen[0], total
    return spent


def report(results: list[Result], args: argparse.Namespace) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    rows = [
        ("spans stored / sent", lambda r: f"{r.stored:,} / {r.spans:,}"),
        ("runs ended", lambda r: f"{r.runs_ended:,} / {args.runs:,}"),
        ("exports ok / failed", lambda r: f"{r.client.get('ok')} / {r.client.get('failed')}"),
        ("end-to-end spans/s", lambda r: f"{r.rate:,.0f}"),
        ("end-to-end seconds", lambda r: f"{r.seconds:.1f}"),
        ("first span queryable (s)", lambda r: f"{r.first_queryable:.2f}"),
        ("generator: all exported (s)", lambda r: f"{r.client.get('sent_seconds', 0):.1f}"),
        ("server CPU (cores)", lambda r: f"{r.server_cpu / r.seconds:.2f}"),
        ("server CPU per span (ms)", lambda r: f"{r.server_cpu / r.stored * 1000:.3f}"),
        ("postgres CPU (cores, shared)", lambda r: f"{r.postgres_cpu / r.seconds:.2f}"),
        ("generator CPU (s)", lambda r: f"{r.client_cpu:.1f}"),
        ("server RSS idle / peak (MiB)", lambda r: f"{r.idle_rss:.0f} / {r.peak_rss:.0f}"),
    ]
    rows.append(
        (
            "GET /runs/ before ingesting p50 ms",
            lambda r: f"{percentile(r.list_ms['idle'], 0.5):.1f}",
        )
    )
    for path in PAGES:
        rows.append(
            (
                f"GET {path} p50 / p99 ms (n)",
                lambda r, p=path: (
                    f"{percentile(r.list_ms[p], 0.5):.1f} / "
                    f"{percentile(r.list_ms[p], 0.99):.1f} ({len(r.list_ms[p])})"
                ),
            )
        )
    width = max(len(label) for label, _ in rows)
    print()
    print(f"{'':{width}}  " + "  ".join(f"rep {i + 1:<14}" for i in range(len(results))))
    for label, cell in rows:
        print(f"{label:{width}}  " + "  ".join(f"{cell(r):<18}" for r in results))
    rate = median([r.rate for r in results])
    lost = sum(r.spans - r.stored for r in results) + sum(
        r.client.get("failed", 0) for r in results
    )
    p99 = max(median([percentile(r.list_ms[page], 0.99) for r in results]) for page in PAGES)
    paced = f"paced at {args.rate:,.0f} spans/s" if args.rate else "unpaced"
    print()
    print(
        f"median ({paced}): {rate:,.0f} spans/s end to end ({rate / 1000:.2f}x the 1,000 "
        f"spans/s goal; Phoenix: 81), server "
        f"{median([r.server_cpu / r.seconds for r in results]):.2f} cores, peak RSS "
        f"{median([r.peak_rss for r in results]):.0f} MiB, runs list p99 {p99:.1f} ms while "
        f"ingesting (the slower of its two pages; goal < 100 ms); lost: {lost}"
    )
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--browse-interval",
        type=float,
        default=1.0,
        help="seconds between two runs list loads while ingesting (a page refreshing live)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="spans per second the generator sends (0: as fast as the console takes them); "
        "--rate 1000 measures the runs list while ingesting at the goal's rate",
    )
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.runs, args.rate)
        return
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database (it is migrated and written to).")
    ensure_database(url)
    data_dir = tempfile.mkdtemp(prefix="bench-otlp-")
    django_setup(url, data_dir)
    log_dir = Path(data_dir)
    print(
        f"{args.runs} runs x {SPANS_PER_RUN} spans, {args.reps} repetitions, "
        f"{args.workers} uvicorn workers; logs in {log_dir}",
        flush=True,
    )
    results = [one_rep(args, rep, url, log_dir) for rep in range(args.reps)]
    report(results, args)


if __name__ == "__main__":
    main()
