"""Prometheus metrics for ``/metrics``.

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
import time
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from agents import stop_reasons

REGISTRY = CollectorRegistry(auto_describe=True)

DECISIONS = Counter(
    "opsconsole_gateway_decisions",
    "Gateway answers by kind (tool_call, step), outcome and stop reason kind.",
    ["kind", "outcome", "stop_reason"],
    registry=REGISTRY,
)
DECISION_SECONDS = Histogram(
    "opsconsole_gateway_decision_seconds",
    "Time to decide a tool call or a step, including its transaction.",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)

F = TypeVar("F", bound=Callable[..., Any])


def observed_decision(kind: str) -> Callable[[F], F]:
    """Count and time every answer of a gateway service returning ``.decision``/``.stop_reason``.

    Failures (404, 409, validation) are not decisions and are not counted.
    """

    def decorator(function: F) -> F:
        @wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            outcome = function(*args, **kwargs)
            DECISION_SECONDS.labels(kind).observe(time.perf_counter() - started)
            reason = stop_reasons.kind_of(outcome.stop_reason or "") or "none"
            DECISIONS.labels(kind, str(outcome.decision), reason).inc()
            return outcome

        return wrapper  # type: ignore[return-value]

    return decorator


class DatabaseStateCollector:
    """Gauges read from the database at scrape time (see the module docstring)."""

    def describe(self) -> list[Metric]:
        # Nothing up front: describing would query the database at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        from agents.models import BreakerState, ToolBreaker
        from agents.selectors import kill_switch_current
        from approvals.models import ApprovalRequest, ApprovalStatus
        from opsconsole.models import KillSwitchMode

        pending = GaugeMetricFamily(
            "opsconsole_pending_approvals", "Approval requests waiting for a reviewer."
        )
        pending.add_metric(
            [], ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).count()
        )
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
