"""A fail-closed Python client for the Agent Ops Console gateway (API v1), sync and asyncio.

It needs only ``httpx``. Every tool call is decided by the gateway *before* the tool runs, and
every model call is gated before it is made::

    from opsconsole_client import Budgets, Gateway, Stop

    gateway = Gateway("http://127.0.0.1:8000", key="aok_...")
    try:
        with gateway.run("answer ticket 4711", budgets=Budgets(max_tool_calls=10)) as run:
            ticket = run.gate(model="small-model", estimate_tokens=1_000)  # before the model call
            reply = call_the_model(...)
            run.usage(ticket, tokens_in=900, tokens_out=120, usd=0.002)  # after it
            hits = run.tool("search.read", {"q": "refund policy"}, search, call_id="call_1")
            run.answer = summarise(hits)  # the run finishes `succeeded` when the block ends
    except Stop as stop:
        print("stopped:", stop.reason)  # e.g. max_tool_calls, tool_denied:browser.open

``AsyncGateway`` / ``AsyncRun`` are the same with ``async with`` and ``await``.

The client never proceeds on doubt. Whatever it cannot interpret becomes :class:`Stop`, and the
tool is not called:

- a stop decision from the gateway: ``Stop(<stop reason>)``;
- a 5xx answer (503 included), or the network after its retries:
  ``Stop("control_plane_unavailable")``;
- a 429 past the :class:`RetryPolicy`'s bounded wait: ``Stop("rate_limited")``;
- an answer that is not JSON, lacks a field or carries an unknown decision:
  ``Stop("protocol_error")``;
- any other 4xx error ``{"error": code, "detail": ...}``: ``Stop(code)`` (``Stop.status_code``
  holds the HTTP status), except that a 409 carrying a ``stop_reason`` (a refused run, a run that
  already ended) raises ``Stop(stop_reason)``.

:class:`Stop` derives from ``BaseException``, so ``except Exception`` in an agent framework does
not swallow it; and the run context re-raises it on exit even when something did.
"""

from __future__ import annotations

from opsconsole_client._async import AsyncGateway, AsyncRun, RunStart
from opsconsole_client._protocol import (
    CONTROL_PLANE_UNAVAILABLE,
    PROTOCOL_ERROR,
    RATE_LIMITED,
    Budgets,
    Interrupted,
    RetryPolicy,
    StepTicket,
    Stop,
    ToolDecision,
)
from opsconsole_client._sync import Gateway, Run
from opsconsole_client.automation import AsyncConsole, Console, ConsoleError

__version__ = "0.2.0"

__all__ = [
    "CONTROL_PLANE_UNAVAILABLE",
    "PROTOCOL_ERROR",
    "RATE_LIMITED",
    "AsyncConsole",
    "AsyncGateway",
    "AsyncRun",
    "Budgets",
    "Console",
    "ConsoleError",
    "Gateway",
    "Interrupted",
    "RetryPolicy",
    "Run",
    "RunStart",
    "StepTicket",
    "Stop",
    "ToolDecision",
]
