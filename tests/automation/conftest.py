"""A few ended runs of two agents for the automation API's tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agents.gateway import services as gateway_services
from agents.models import Run

POLICY = """
tools:
  allow: ["kb.read", "search.read", "email.send"]
  definitions:
    email.send: {effect: write}
budgets: {max_tool_calls: 50, max_steps: 50, max_seconds: 600}
"""


@dataclass
class Fleet:
    """Runs oldest first: support-bot's ok, denied and cancelled runs; other-bot's ok run."""

    ok: Run
    denied: Run
    cancelled: Run
    other: Run
    running: Run

    @property
    def newest_first(self) -> list[int]:
        return [r.pk for r in (self.running, self.other, self.cancelled, self.denied, self.ok)]


@pytest.fixture
def fleet(agent, outsider_agent, publish_policy) -> Fleet:
    publish_policy(POLICY)

    def finished(persona, task: str) -> Run:
        run, _ = gateway_services.run_start(agent=persona.agent, task=task)
        gateway_services.tool_call_decide(
            agent=persona.agent, run_id=run.pk, tool="kb.read", args={"q": task}
        )
        return gateway_services.run_finish(agent=persona.agent, run_id=run.pk, status="succeeded")

    ok = finished(agent, "refund for order 17")
    denied, _ = gateway_services.run_start(agent=agent.agent, task="delete the database")
    gateway_services.tool_call_decide(agent=agent.agent, run_id=denied.pk, tool="db.drop", args={})
    cancelled, _ = gateway_services.run_start(agent=agent.agent, task="compare prices")
    gateway_services.run_cancel(run_id=cancelled.pk, actor="user:olivia", reason="runaway")
    other = finished(outsider_agent, "weekly report")
    running, _ = gateway_services.run_start(agent=agent.agent, task="still thinking")
    return Fleet(
        ok=Run.objects.get(pk=ok.pk),
        denied=Run.objects.get(pk=denied.pk),
        cancelled=Run.objects.get(pk=cancelled.pk),
        other=Run.objects.get(pk=other.pk),
        running=Run.objects.get(pk=running.pk),
    )
