"""OpenTelemetry in: the OTLP/HTTP trace receiver and observed runs (docs/telemetry.md).

``wire.py`` (the OTLP/HTTP rules over bytes), ``conventions.py`` (the four attribute vocabularies
mapped to runs, steps and tool calls), ``services.py`` (a batch stored as runs in one
transaction; what enforcing would have done), ``api.py`` (``POST /v1/traces``), ``tasks.py``.
"""
