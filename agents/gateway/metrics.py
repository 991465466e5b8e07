"""The gateway's own Prometheus counters (answers by outcome and stop reason, decision latency),
incremented where a decision is made; ``/metrics`` exposes them (agents/monitoring/metrics.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

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
