"""The OTLP receiver's Prometheus counters, on the registry ``/metrics`` exposes
(agents/monitoring/metrics.py): what became of the spans sent, and the export requests'
answers, so an operator sees dropped spans and refused batches without reading responses."""

from __future__ import annotations

from prometheus_client import Counter

from agents.gateway.metrics import REGISTRY

# accepted: stored; rejected: dropped and reported in partial_success; duplicate: already
# stored (a re-sent batch, or the same span twice in one request), skipped.
SPANS = Counter(
    "opsconsole_otlp_spans",
    "Spans received on /v1/traces by outcome (accepted, rejected, duplicate).",
    ["outcome"],
    registry=REGISTRY,
)

# Every answer of the OTLP/HTTP paths: signal is traces, metrics or logs (the last two are
# always refused), code the HTTP status. A whole batch refused (400, 413, 429, 503) is counted
# here, its spans are not counted above.
REQUESTS = Counter(
    "opsconsole_otlp_requests",
    "OTLP/HTTP export requests by signal (traces, metrics, logs) and HTTP status.",
    ["signal", "code"],
    registry=REGISTRY,
)

for _outcome in ("accepted", "rejected", "duplicate"):
    SPANS.labels(_outcome)  # present at 0 from the first scrape
