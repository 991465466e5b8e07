"""Monitoring: metric rollups, drift rules and their alerts (services and selectors).

Rollups are computed from raw rows (runs, step events, tool calls, approval requests) by the
background job only (``rollups_compute``, task ``monitoring.rollup``); pages read
``MetricRollup`` rows and never aggregate raw events.

- A run belongs to the bucket in which it **ended**: its counters are final then, so
  recomputing the current and previous buckets is enough and the job is an idempotent upsert.
- Every bucket is computed from raw rows (a day is not made of hours): percentiles do not add.
- Percentiles are **nearest-rank**: the p-th percentile of n sorted values is the value at rank
  ceil(p/100 * n) (1-based). It is always an observed value, exact and reproducible.
- Rows exist per (agent, version), per (agent, every version ``"*"``) and for every agent
  (agent NULL, ``"*"``), so a chart or a rule can compare versions or look at the fleet.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import stop_reasons
from agents.models import (
    ALL_VERSIONS,
    Agent,
    AgentMode,
    BucketSize,
    EventKind,
    MetricRollup,
    Run,
    ToolCall,
    TraceEvent,
)
from agents.monitoring.drift import drift_evaluate
from approvals.selectors import approval_waits

ROLLUP_USD_MAX = Decimal("99999999.999999")  # MetricRollup.usd_sum: 14 digits, 6 decimals
SIZES = {BucketSize.HOUR: timedelta(hours=1), BucketSize.DAY: timedelta(days=1)}


# --- percentiles and buckets ------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile (see the module docstring); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[rank - 1])


def bucket_start(moment: datetime, size: str) -> datetime:
    """The start (UTC) of the hour or day containing ``moment``."""
    moment = moment.astimezone(UTC)
    if size == BucketSize.DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


# --- rollups ----------------------------------------------------------------------------------

_Key = tuple[int | None, str]  # (agent id or None for every agent, version or "*")


@dataclass
class _Samples:
    runs: int = 0
    stop_reasons: dict[str, int] | None = None
    observed_runs: int = 0
    would_stop_reasons: dict[str, int] | None = None
    tool_calls: list[int] | None = None
    usd: list[Decimal] | None = None
    tokens: list[int] | None = None
    waits: list[float] | None = None
    latencies: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        self.stop_reasons, self.would_stop_reasons = {}, {}
        self.tool_calls, self.usd, self.tokens, self.waits = [], [], [], []
        self.latencies = defaultdict(list)


def _keys(agent_id: int, version: str) -> tuple[_Key, ...]:
    return ((agent_id, version), (agent_id, ALL_VERSIONS), (None, ALL_VERSIONS))


def rollup_bucket(*, size: str, start: datetime, now: datetime | None = None) -> int:
    """Recompute every rollup row of one bucket from raw rows; returns the rows written."""
    end = start + SIZES[size]
    ended = Run.objects.filter(ended_at__gte=start, ended_at__lt=end)
    samples: dict[_Key, _Samples] = defaultdict(_Samples)
    run_keys: dict[int, tuple[_Key, ...]] = {}

    for run_id, agent_id, version, calls, usd, reason, mode, would in ended.values_list(
        "pk",
        "agent_id",
        "agent_version",
        "tool_calls",
        "usd",
        "stop_reason",
        "mode",
        "would_stop_reason",
    ).iterator(chunk_size=2000):
        keys = run_keys[run_id] = _keys(agent_id, version)
        for key in keys:
            sample = samples[key]
            sample.runs += 1
            sample.stop_reasons[reason] = sample.stop_reasons.get(reason, 0) + 1
            if mode == AgentMode.OBSERVE:
                sample.observed_runs += 1
            if would:
                sample.would_stop_reasons[would] = sample.would_stop_reasons.get(would, 0) + 1
            sample.tool_calls.append(calls)
            sample.usd.append(usd)

    steps = TraceEvent.objects.filter(
        kind=EventKind.STEP, run__ended_at__gte=start, run__ended_at__lt=end
    ).values_list("run_id", "data__tokens_in", "data__tokens_out")
    for run_id, tokens_in, tokens_out in steps.iterator(chunk_size=5000):
        for key in run_keys.get(run_id, ()):
            samples[key].tokens.append(int(tokens_in or 0) + int(tokens_out or 0))

    for run_id, wait_seconds in approval_waits(runs_ended_from=start, runs_ended_before=end):
        for key in run_keys.get(run_id, ()):
            samples[key].waits.append(wait_seconds)

    results = ToolCall.objects.filter(
        run__ended_at__gte=start, run__ended_at__lt=end, latency_ms__isnull=False
    ).values_list("run_id", "tool", "latency_ms")
    for run_id, tool, latency in results.iterator(chunk_size=5000):
        for key in run_keys.get(run_id, ()):
            samples[key].latencies[tool].append(latency)

    now = now or timezone.now()
    with transaction.atomic():
        for (agent_id, version), sample in samples.items():
            _upsert(agent_id, version, size, start, _fields(sample, now))
        # A series with no runs left in the bucket (e.g. they were deleted) keeps no stale row.
        existing = MetricRollup.objects.filter(size=size, start=start).values_list(
            "pk", "agent_id", "agent_version"
        )
        stale = [pk for pk, agent_id, version in existing if (agent_id, version) not in samples]
        if stale:
            MetricRollup.objects.filter(pk__in=stale).delete()
    return len(samples)


def _fields(sample: _Samples, now: datetime) -> dict[str, Any]:
    every_latency = [ms for values in sample.latencies.values() for ms in values]
    # Bounded by the column (numeric(14,6)), as the runs' own counters are: a bucket of runs
    # near their cap must not make the rollup sweep fail on every tick.
    usd_sum = min(sum(sample.usd, Decimal("0")), ROLLUP_USD_MAX)
    return {
        "runs": sample.runs,
        "stop_reasons": dict(sorted(sample.stop_reasons.items())),
        "observed_runs": sample.observed_runs,
        "would_stop_reasons": dict(sorted(sample.would_stop_reasons.items())),
        "tool_calls_p50": percentile(sample.tool_calls, 50),
        "tool_calls_p95": percentile(sample.tool_calls, 95),
        "requests": len(sample.tokens),
        "tokens_p50": percentile(sample.tokens, 50),
        "tokens_p95": percentile(sample.tokens, 95),
        "usd_sum": usd_sum,
        "usd_avg": (usd_sum / sample.runs).quantize(Decimal("0.000001")) if sample.runs else None,
        "approvals": len(sample.waits),
        "approval_wait_p50": percentile(sample.waits, 50),
        "approval_wait_p95": percentile(sample.waits, 95),
        "tool_results": len(every_latency),
        "latency_p95": percentile(every_latency, 95),
        "tool_latency_p95": {
            tool: percentile(values, 95) for tool, values in sorted(sample.latencies.items())
        },
        "computed_at": now,
    }


def _upsert(agent_id: int | None, version: str, size: str, start: datetime, fields: dict) -> None:
    key = {"agent_id": agent_id, "agent_version": version, "size": size, "start": start}
    if MetricRollup.objects.filter(**key).update(**fields):
        return
    try:
        with transaction.atomic():
            MetricRollup.objects.create(**key, **fields)
    except IntegrityError:
        # Another rollup job created the row between our UPDATE and INSERT: same numbers.
        MetricRollup.objects.filter(**key).update(**fields)


# How old an open bucket's rows may be before the job recomputes them: every bucket is computed
# from raw rows, and the current day holds up to a day of them (at 30,000 runs an hour, seconds of
# CPU), so it is refreshed every 10 minutes while the current hour is refreshed on every run of the
# job (each minute) - once, whichever process runs it. A closed bucket is recomputed until SETTLE
# after its end (runs that ended just before its boundary and committed just after), then left.
REFRESH = {BucketSize.HOUR: timedelta(seconds=50), BucketSize.DAY: timedelta(minutes=10)}
SETTLE = timedelta(minutes=5)


def rollup_due(*, size: str, start: datetime, now: datetime) -> bool:
    """Whether the job recomputes this bucket now (see ``REFRESH``)."""
    computed = (
        MetricRollup.objects.filter(size=size, start=start)
        .order_by("computed_at")
        .values_list("computed_at", flat=True)
        .first()
    )
    if computed is None:
        return True  # never computed, or no runs ended in it (then it costs nothing)
    end = start + SIZES[size]
    if end <= now:
        return computed < end + SETTLE
    return now - computed >= REFRESH[size]


def rollups_compute(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic job: recompute the current and previous hour and day when they are due
    (``rollup_due``), then drift rules.

    Idempotent: running it twice (or in two processes) writes the same rows.
    """
    now = now or timezone.now()
    written = 0
    evaluated: list[tuple[str, datetime]] = []
    for size, length in SIZES.items():
        current = bucket_start(now, size)
        for start in (current - length, current):
            if rollup_due(size=size, start=start, now=now):
                written += rollup_bucket(size=size, start=start, now=now)
            evaluated.append((size, start))
    alerts = sum(drift_evaluate(size=size, start=start) for size, start in evaluated)
    return {"rollups": written, "alerts": alerts}


# --- selectors for the monitoring page --------------------------------------------------------


def rollup_series(
    *, agent: Agent | None, version: str, size: str, since: datetime, until: datetime
) -> list[MetricRollup]:
    """The rollup rows of one series (agent or every agent, version or ``"*"``), oldest first."""
    rows = MetricRollup.objects.filter(
        agent=agent, agent_version=version or ALL_VERSIONS, size=size, start__gte=since
    ).filter(start__lt=until)
    return list(rows.order_by("start"))


def agent_versions() -> dict[str, list[str]]:
    """{agent name: [versions seen in rollups]} for the page's pickers."""
    result: dict[str, list[str]] = defaultdict(list)
    rows = (
        MetricRollup.objects.filter(agent__isnull=False)
        .exclude(agent_version=ALL_VERSIONS)
        .values_list("agent__name", "agent_version")
        .distinct()
        .order_by("agent__name", "agent_version")
    )
    for name, version in rows:
        result[name].append(version)
    return dict(result)


# --- drift ------------------------------------------------------------------------------------


# --- rules (admin) ----------------------------------------------------------------------------


# --- the monitoring page ----------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesKey:
    """One line of the page: an agent (or every agent) and a version (or every version)."""

    agent: str  # "" for every agent
    version: str  # "" for every version

    @property
    def label(self) -> str:
        return f"{self.agent or 'every agent'} · {self.version or 'every version'}"


@dataclass(frozen=True)
class Dashboard:
    size: str
    buckets: list[datetime]
    # Per series, one rollup (or None) per bucket.
    series: list[tuple[SeriesKey, list[MetricRollup | None]]]
    stop_reason_kinds: list[str]
    # The first bucket with data, when the span drawn holds none but older buckets (within
    # ``reach``) do: the page says so and links a span that shows them.
    older_start: datetime | None = None


# A span fitted to the data has at least this many buckets (one point is not a lone dot).
FIT_MIN_BUCKETS = 6


def dashboard(
    *,
    keys: list[SeriesKey],
    size: str,
    buckets: int,
    fit: bool = False,
    reach: int = 0,
    now: datetime | None = None,
) -> Dashboard:
    """The rollups of one or two series over the last ``buckets`` buckets, aligned by bucket.

    The last ``reach`` buckets (at least ``buckets``) are read. With ``fit``, the span drawn
    runs from the first bucket with data to now (at least ``FIT_MIN_BUCKETS``), unless no data
    is in the last ``buckets``: then those are drawn, as without ``fit``, and the older data is
    pointed at (``older_start``). One query per series (plus one for the agents named):
    nothing is aggregated here.
    """
    length = SIZES[size]
    last = bucket_start(now or timezone.now(), size)
    reach = max(reach, buckets)
    read = [last - length * index for index in range(reach - 1, -1, -1)]
    names = {key.agent for key in keys if key.agent}
    agents = {agent.name: agent for agent in Agent.objects.filter(name__in=names)} if names else {}
    found_rows: list[tuple[SeriesKey, dict[datetime, MetricRollup]]] = []
    for key in keys:
        rows: dict[datetime, MetricRollup] = {}
        if not key.agent or key.agent in agents:
            found = rollup_series(
                agent=agents.get(key.agent),
                version=key.version,
                size=size,
                since=read[0],
                until=last + length,
            )
            rows = {row.start: row for row in found}
        found_rows.append((key, rows))
    with_data = sorted({start for _, rows in found_rows for start in rows})
    count = buckets
    if fit and with_data and with_data[-1] >= read[-buckets]:
        count = max(FIT_MIN_BUCKETS, (last - with_data[0]) // length + 1)
    starts = read[-min(count, reach) :]
    older = with_data[0] if with_data and with_data[-1] < starts[0] else None
    series = []
    kinds: set[str] = set()
    for key, rows in found_rows:
        drawn = [rows.get(start) for start in starts]
        for row in drawn:
            if row:
                kinds.update(stop_reasons.kind_of(reason) for reason in row.stop_reasons)
        series.append((key, drawn))
    order = [kind for kind in stop_reasons.ALL_KINDS if kind in kinds]
    return Dashboard(
        size=size, buckets=starts, series=series, stop_reason_kinds=order, older_start=older
    )


@dataclass(frozen=True)
class WouldStopTotals:
    """Observe mode over a span of rollups: how many observed runs ended, and how many enforcing
    would have stopped, by stop reason kind (most first)."""

    observed_runs: int
    would_stop: int
    by_kind: list[tuple[str, int]]


def would_stop_totals(rows: Iterable[MetricRollup | None]) -> WouldStopTotals:
    """Summed from rollup rows already read (nothing is queried)."""
    observed = 0
    kinds: dict[str, int] = defaultdict(int)
    for row in rows:
        if row is None:
            continue
        observed += row.observed_runs
        for reason, n in (row.would_stop_reasons or {}).items():
            kinds[stop_reasons.kind_of(reason)] += n
    return WouldStopTotals(
        observed_runs=observed,
        would_stop=sum(kinds.values()),
        by_kind=sorted(kinds.items(), key=lambda item: (-item[1], item[0])),
    )


def stop_reason_kinds(rollup: MetricRollup | None) -> dict[str, int]:
    """A rollup's stop reasons counted by kind (``tool_denied:x`` and ``:y`` together)."""
    counts: dict[str, int] = defaultdict(int)
    for reason, n in (rollup.stop_reasons if rollup else {}).items():
        counts[stop_reasons.kind_of(reason)] += n
    return dict(counts)
