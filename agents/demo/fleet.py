"""The demo fleet: simulated agents replaying the seed's incident against a live console.

Two halves. ``agents.demo.world.prepare`` is the server side (Django): it creates the demo
users, the demo policy and the demo agents with fresh keys. This module, after it, talks to the
console *only* through the client package (:mod:`opsconsole_client`, ``clients/python/``) over
HTTP, exactly as a real agent process would (an import contract holds it so): the ASGI server
runs as a subprocess (:class:`opsconsole.devserver.ConsoleServer`) and :class:`Fleet` runs one
thread per simulated agent. No model is involved; each agent follows a short script.

The agents and the stop reason each one shows:

- ``support-bot`` answers from the knowledge base and finishes ``ok``;
- ``browser-runaway`` is the incident: the vendor is down, ``browser.open`` "succeeds" with an
  error page, the agent retries with varying URLs until ``max_tool_calls`` stops it;
- ``loop-bot`` repeats the same ``search.read`` until ``loop_detected:search.read``;
- ``mail-bot`` writes (``email.send``, ``ticket.update``) and waits in the approvals queue;
- ``quote-bot`` calls a flaky ``vendor.quote.get`` (about 70% failures) until its circuit
  breaker opens: ``tool_degraded:vendor.quote.get``.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opsconsole_client import (
    CONTROL_PLANE_UNAVAILABLE,
    PROTOCOL_ERROR,
    Budgets,
    Gateway,
    Interrupted,
    Run,
    Stop,
)

AGENT_VERSION = "demo-1"


# --- the agents (client side only) ------------------------------------------------------------


class Pace:
    """Sleeps that end early when the fleet stops (raising Interrupted mid-run)."""

    def __init__(self, stopping: threading.Event, rng: random.Random, scale: float) -> None:
        self.stopping, self.rng, self.scale = stopping, rng, scale

    def pause(self, seconds: float) -> None:
        if self.stopping.wait(seconds * self.scale):
            raise Interrupted("the demo is shutting down")


def _step(run: Run, pace: Pace, summary: str, tokens_in: int = 900) -> None:
    """One simulated model call: asked for first (the step gate: a call that would break a
    budget is refused before it is made), its usage reported after."""
    tokens_in += pace.rng.randint(0, 300)
    tokens_out = pace.rng.randint(40, 160)
    usd = round((tokens_in + tokens_out) * 0.000002, 6)
    ticket = run.gate(
        model="sim-small",
        estimate_tokens=tokens_in + 160,
        estimate_usd=round((tokens_in + 160) * 0.000002, 6),
    )
    run.usage(
        ticket,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        usd=usd,
        latency_ms=pace.rng.randint(300, 1200),
        summary=summary,
    )
    pace.pause(0.1)


def _working(
    pace: Pace, low: float, high: float, body: Callable[[dict[str, Any]], dict[str, Any]]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``body`` as a tool that takes as long as a real one would (scaled like every pause), so
    the latency the client reports, and the console charts, are not all zero."""

    def tool(args: dict[str, Any]) -> dict[str, Any]:
        pace.pause(pace.rng.uniform(low, high))
        return body(args)

    return tool


def support_bot(run: Run, pace: Pace, iteration: int) -> None:
    """Well-behaved: search, read one article, answer."""
    _step(run, pace, "search the knowledge base")
    hits = run.tool(
        "search.read",
        {"q": "reset password", "limit": 3},
        _working(
            pace,
            0.08,
            0.25,
            lambda args: {"hits": [{"id": "kb-101", "title": "Resetting your password"}]},
        ),
    )
    pace.pause(0.3)
    _step(run, pace, "read the best hit")
    article = run.tool(
        "kb.read",
        {"id": hits["hits"][0]["id"]},
        _working(
            pace,
            0.03,
            0.12,
            lambda args: {"id": args["id"], "text": "Use 'Forgot password' on the login page."},
        ),
    )
    pace.pause(0.3)
    _step(run, pace, "compose the answer", tokens_in=1500)
    run.answer = f"From {article['id']}: {article['text']}"


def _vendor_outage_page(args: dict[str, Any]) -> dict[str, Any]:
    # The browser works; the page it brings back is the vendor's error page.
    return {"url": args["url"], "status": 200, "title": "503 Service Unavailable", "text": ""}


def browser_runaway(run: Run, pace: Pace, iteration: int) -> None:
    """The seed's incident: retry through a vendor outage, each time with other arguments."""
    attempt = 0
    while True:
        attempt += 1
        _step(run, pace, f"the pricing page looks broken; retry #{attempt}", tokens_in=2500)
        run.tool(
            "browser.open",
            {"url": f"https://vendor.example/pricing?attempt={attempt}&cb={pace.rng.random():.6f}"},
            _working(pace, 0.15, 0.4, _vendor_outage_page),
        )
        pace.pause(0.15)


def loop_bot(run: Run, pace: Pace, iteration: int) -> None:
    """Stuck: asks the same question again and again."""
    while True:
        _step(run, pace, "still no answer; search again")
        run.tool(
            "search.read",
            {"q": "order status #1042"},
            _working(pace, 0.08, 0.25, lambda args: {"hits": [], "note": "no results"}),
        )
        pace.pause(0.3)


def mail_bot(run: Run, pace: Pace, iteration: int) -> None:
    """A writer: every write waits in the approvals queue for a reviewer."""
    _step(run, pace, "look up the refund policy")
    run.tool(
        "kb.read",
        {"id": "kb-7"},
        _working(pace, 0.03, 0.12, lambda args: {"id": "kb-7", "text": "Refunds in 5 days."}),
    )
    _step(run, pace, "draft the write")
    if iteration % 2:
        number = 4700 + iteration
        run.tool(
            "email.send",
            {
                "to": f"customer{number}@example.com",
                "subject": f"Your refund for order #{number}",
                "body": "Your refund is on its way; expect it within 5 days.",
            },
            lambda args: {"message_id": f"msg-{secrets.token_hex(4)}", "to": args["to"]},
        )
        run.answer = "refund email sent"
    else:
        run.tool(
            "ticket.update",
            {"ticket": f"T-{900 + iteration}", "status": "resolved"},
            lambda args: {"ticket": args["ticket"], "status": args["status"]},
        )
        run.answer = "ticket resolved"


def quote_bot(run: Run, pace: Pace, iteration: int) -> None:
    """Needs three quotes from a flaky vendor API (about 70% of calls fail)."""
    quotes: list[dict[str, Any]] = []
    attempt = 0

    def flaky_quote(args: dict[str, Any]) -> dict[str, Any]:
        pace.pause(pace.rng.uniform(0.2, 0.6))
        if pace.rng.random() < 0.7:
            raise ConnectionError("vendor API timed out")
        return {"vendor": args["vendor"], "sku": args["sku"], "usd": pace.rng.randint(90, 140)}

    while len(quotes) < 3:
        attempt += 1
        vendor = ("acme", "globex", "initech")[len(quotes)]
        _step(run, pace, f"ask {vendor} for a quote (attempt {attempt})")
        try:
            quotes.append(
                run.tool(
                    "vendor.quote.get",
                    {"vendor": vendor, "sku": "GPU-80GB", "attempt": attempt},
                    flaky_quote,
                )
            )
        except ConnectionError:
            pace.pause(0.2)  # and retry
    run.answer = "cheapest: " + min(quotes, key=lambda q: q["usd"])["vendor"]


Behaviour = Callable[[Run, Pace, int], None]


@dataclass(frozen=True)
class DemoAgent:
    name: str
    task: str
    behaviour: Behaviour
    budgets: Budgets = field(default_factory=Budgets)


DEMO_AGENTS = [
    DemoAgent("support-bot", "Answer: how do I reset my password?", support_bot),
    DemoAgent(
        "browser-runaway", "Compare the vendor's GPU prices from its pricing page", browser_runaway
    ),
    DemoAgent("loop-bot", "Find the status of order #1042", loop_bot),
    DemoAgent("mail-bot", "Tell the customer about their refund", mail_bot),
    DemoAgent("quote-bot", "Get three quotes for GPU-80GB and pick the cheapest", quote_bot),
]


class Fleet:
    """One thread per agent, each looping runs with a pause between them until :meth:`stop`.

    ``report`` receives one line per finished run. The first run of each agent starts at once.
    """

    def __init__(
        self,
        base_url: str,
        keys: dict[str, str],
        report: Callable[[str], None],
        *,
        agents: list[DemoAgent] | None = None,
        pause_seconds: tuple[float, float] = (3.0, 6.0),
        pace_scale: float = 1.0,
        poll_seconds: float = 2.0,
    ) -> None:
        self.base_url = base_url
        self.keys = keys
        self.agents = agents if agents is not None else DEMO_AGENTS
        self.pause_seconds = pause_seconds
        self.pace_scale = pace_scale
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()
        self._report = report
        self._report_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for agent in self.agents:
            thread = threading.Thread(
                target=self._loop, args=(agent,), name=f"fleet-{agent.name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every agent to stop; an agent mid-run ends that run ``failed``."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> int:
        return sum(thread.is_alive() for thread in self._threads)

    def _loop(self, agent: DemoAgent) -> None:
        rng = random.Random(f"{agent.name}-{os.getpid()}-{time.time_ns()}")
        pace = Pace(self.stopping, rng, self.pace_scale)
        gateway = Gateway(
            self.base_url,
            self.keys[agent.name],
            poll_seconds=self.poll_seconds,
            interrupt=self.stopping,
        )
        iteration = 0
        with gateway:
            while not self.stopping.is_set():
                iteration += 1
                run_id, outcome = self._one_run(gateway, agent, pace, iteration)
                self._line(agent.name, run_id, outcome)
                self.stopping.wait(rng.uniform(*self.pause_seconds))

    def _one_run(
        self, gateway: Gateway, agent: DemoAgent, pace: Pace, iteration: int
    ) -> tuple[int | None, str]:
        run: Run | None = None
        try:
            run = gateway.run(
                agent.task,
                budgets=agent.budgets,
                agent_version=AGENT_VERSION,
                metadata={"demo": True, "iteration": iteration},
            )
            with run:
                agent.behaviour(run, pace, iteration)
            return run.id, run.stop_reason or run.status
        except Stop as stop:
            outcome = stop.reason
            if stop.reason in {CONTROL_PLANE_UNAVAILABLE, PROTOCOL_ERROR}:
                outcome += f" ({stop.detail})"
            return (run.id if run else None), outcome
        except Interrupted:
            return (run.id if run else None), "error (interrupted: the demo is shutting down)"
        except Exception as exc:  # noqa: BLE001 - a demo agent's bug must not kill its thread
            return (run.id if run else None), f"error ({type(exc).__name__}: {exc})"

    def _line(self, agent: str, run_id: int | None, outcome: str) -> None:
        with self._report_lock:
            self._report(f"{agent:<16} run {run_id if run_id is not None else '-':<6} {outcome}")
