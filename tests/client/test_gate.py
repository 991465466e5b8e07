"""The client against the real gateway (in-process through WSGI): the step gate refuses the model
call that would break a budget before it is made, and a caller's ``call_id`` makes a tool call
idempotent across processes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from opsconsole_client import Budgets, Gateway, Stop
from tests.client.conftest import Impl

real_gateway = pytest.mark.django_db(transaction=True)


@pytest.fixture
def wsgi_transport() -> httpx.WSGITransport:
    from django.core.wsgi import get_wsgi_application

    return httpx.WSGITransport(app=get_wsgi_application())


@pytest.fixture
def gateway(agent, wsgi_transport) -> Iterator[Gateway]:
    with Gateway("http://testserver", agent.key, transport=wsgi_transport) as client:
        yield client


class Model:
    """A scripted model: each call costs what it says; the test counts the calls made."""

    def __init__(self, tokens: int = 400, usd: float = 0.01) -> None:
        self.calls = 0
        self.tokens, self.usd = tokens, usd

    def __call__(self) -> tuple[int, float]:
        self.calls += 1
        return self.tokens, self.usd


def agent_loop(run, model: Model, *, estimate: bool = True, limit: int = 50) -> None:
    for _ in range(limit):
        ticket = run.gate(
            model="scripted",
            estimate_tokens=model.tokens if estimate else None,
            estimate_usd=model.usd if estimate else None,
        )
        tokens, usd = model()
        run.usage(ticket, tokens_in=tokens, usd=usd)


@pytest.mark.parametrize(
    ("budgets", "reason", "calls"),
    [
        (Budgets(max_steps=3), "max_steps", 3),
        (Budgets(max_tokens=1000), "max_tokens", 2),  # 400 + 400; a third would make 1200
        (Budgets(max_usd=0.035), "max_usd", 3),  # 0.01 each; a fourth would make 0.04
    ],
    ids=["max_steps", "max_tokens", "max_usd"],
)
@real_gateway
def test_the_gate_refuses_the_model_call_that_would_break_a_budget(gateway, budgets, reason, calls):
    from agents.models import Run as RunRow

    model = Model()

    with (
        pytest.raises(Stop) as stopped,
        gateway.run("summarise the ticket", budgets=budgets) as run,
    ):
        agent_loop(run, model)

    assert stopped.value.reason == reason
    assert model.calls == calls  # the refused call was never made, so never paid for
    row = RunRow.objects.get(pk=run.id)
    assert (row.status, row.stop_reason, row.steps) == ("stopped", reason, calls)
    assert row.tokens == calls * model.tokens


@real_gateway
def test_the_gate_refuses_a_model_call_past_max_seconds(gateway):
    from django.utils import timezone

    from agents.models import Run as RunRow

    model = Model()
    with (
        pytest.raises(Stop) as stopped,
        gateway.run("slow", budgets=Budgets(max_seconds=30)) as run,
    ):
        agent_loop(run, model, limit=1)
        RunRow.objects.filter(pk=run.id).update(started_at=timezone.now() - timedelta(seconds=31))
        agent_loop(run, model, limit=1)

    assert stopped.value.reason == "max_seconds"
    assert model.calls == 1


@real_gateway
def test_gated_steps_and_tool_calls_finish_ok_with_their_usage(gateway):
    from agents.models import Run as RunRow

    with gateway.run("answer", budgets=Budgets(max_steps=5)) as run:
        ticket = run.gate(model="small", estimate_tokens=200)
        run.usage(ticket, tokens_in=150, tokens_out=30, usd="0.0012")
        run.tool("search.read", {"q": "refunds"}, Impl(), call_id="call_1")
        run.answer = "done"

    row = RunRow.objects.get(pk=run.id)
    assert (row.status, row.steps, row.tokens, row.tool_calls) == ("succeeded", 1, 180, 1)
    assert str(row.usd) == "0.001200"


@real_gateway
def test_a_call_id_makes_a_tool_call_idempotent_across_two_client_processes(agent, wsgi_transport):
    """A resumed agent (a new process, a new client) asks again for the model's tool_call_id:
    it gets the first decision and spends nothing."""
    from agents.models import Run as RunRow
    from agents.models import ToolCall

    first = Gateway("http://testserver", agent.key, transport=wsgi_transport)
    run = first.run("resumable task", idempotency_key="ticket-4711")
    decision = run.decide("search.read", {"q": "refunds"}, call_id="call_abc123")
    first.close()  # the process dies before running the tool

    with Gateway("http://testserver", agent.key, transport=wsgi_transport) as second:
        resumed = second.run("resumable task", idempotency_key="ticket-4711")
        again = resumed.decide("search.read", {"q": "refunds"}, call_id="call_abc123")
        resumed.report(again, result={"hits": 2})
        other = resumed.decide("search.read", {"q": "refunds"}, call_id="call_def456")
        resumed.report(other, result={"hits": 2})

    assert resumed.id == run.id
    assert again.tool_call_id == decision.tool_call_id
    assert again.idempotency_key == decision.idempotency_key
    assert other.tool_call_id != decision.tool_call_id
    assert RunRow.objects.get(pk=run.id).tool_calls == 2
    assert ToolCall.objects.filter(run_id=run.id).count() == 2


@real_gateway
def test_a_reused_call_id_with_other_arguments_is_a_stop(gateway):
    run = gateway.run("task")
    run.decide("search.read", {"q": "a"}, call_id="call_1")

    with pytest.raises(Stop) as stopped:
        run.decide("search.read", {"q": "b"}, call_id="call_1")

    assert (stopped.value.reason, stopped.value.status_code) == ("idempotency_key_reused", 409)
