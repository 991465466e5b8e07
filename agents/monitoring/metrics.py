"""Prometheus metrics for ``/metrics`` (the gateway's own counters are agents/gateway/metrics.py,
the OTLP receiver's agents/telemetry/metrics.py).

Two kinds, chosen for correctness with several worker processes:

- **Events counted where they happen** (gateway answers by outcome and stop reason, decision
  latency): prometheus_client counters and a histogram, incremented in the process that
  decided. With one process (the embedded default) they live in memory. With several ASGI
  workers set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder shared by the workers (before they
  start): prometheus_client then keeps the values in files there and ``/metrics`` sums every
  worker's, so a scrape that lands on any worker sees the whole fleet.
- **State** (pending approvals, kill-switch mode, breaker states): read from the database at
  scrape time. The database is the truth every worker shares, so these are right whichever
  worker answers, with no per-process gauge to reconcile. Each is one small indexed query.

Stop reasons are labelled by kind (``tool_denied``, not ``tool_denied:<tool>``): tool names come
from agents, and an unbounded label would let one misbehaving agent flood the time series.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from agents.gateway.metrics import REGISTRY
from agents.models import BreakerState, KillSwitchMode, ToolBreaker
from agents.policy.selectors import kill_switch_current
from agents.telemetry import metrics as _telemetry_metrics  # noqa: F401 - registers its counters
from approvals.selectors import approval_pending_count


class DatabaseStateCollector:
    """Gauges read from the database at scrape time (see the module docstring)."""

    def describe(self) -> list[Metric]:
        # Nothing up front: describing would query the database at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "opsconsole_pending_approvals", "Approval requests waiting for a reviewer."
        )
        pending.add_metric([], approval_pending_count())
        yield pending

        mode = kill_switch_current().mode
        switch = GaugeMetricFamily(
            "opsconsole_kill_switch_mode", "1 for the kill switch's current mode.", labels=["mode"]
        )
        for value in KillSwitchMode.values:
            switch.add_metric([value], 1.0 if value == mode else 0.0)
        yield switch

        breakers = GaugeMetricFamily(
            "opsconsole_tool_breaker_state",
            "1 for each tool's circuit breaker state (degrade mode when open).",
            labels=["tool", "state"],
        )
        failure_rate = GaugeMetricFamily(
            "opsconsole_tool_breaker_failure_rate",
            "Each tool's recent failure rate, as its breaker counts it.",
            labels=["tool"],
        )
        for tool, state, rate in ToolBreaker.objects.order_by("tool").values_list(
            "tool", "state", "failure_rate"
        ):
            for value in BreakerState.values:
                breakers.add_metric([tool, value], 1.0 if value == state else 0.0)
            failure_rate.add_metric([tool], rate)
        yield breakers
        yield failure_rate


REGISTRY.register(DatabaseStateCollector())  # type: ignore[arg-type]


def exposition() -> bytes:
    """The text format for one scrape."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(DatabaseStateCollector())  # type: ignore[arg-type]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
