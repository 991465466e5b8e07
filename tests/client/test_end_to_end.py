"""The Python client driving the real gateway: the app in-process through WSGI, the database
real, reviewers deciding in other threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from opsconsole_client import Budgets, Gateway, Stop
from tests.client.conftest import Impl

# transaction=True: the reviewer threads need to see what the test wrote, and vice versa.
real_gateway = pytest.mark.django_db(transaction=True)

EMAIL_POLICY = """
tools:
  allow: ["search.read", "kb.read", "http.get", "email.send"]
  definitions:
    email.send:
      effect: write
      approval: {required: true, timeout_seconds: 120}
      args_schema:
        type: object
        required: [to, subject, body]
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}
writes: {require_approval: true}
"""

EMAIL = {"to": "customer@example.com", "subject": "Your refund", "body": "It is on its way."}


@pytest.fixture
def wsgi_transport() -> httpx.WSGITransport:
    from django.core.wsgi import get_wsgi_application

    return httpx.WSGITransport(app=get_wsgi_application())


@pytest.fixture
def gateway(agent, wsgi_transport) -> Iterator[Gateway]:
    with Gateway("http://testserver", agent.key, transport=wsgi_transport) as client:
        yield client


def db_run(run_id: int):
    from agents.models import Run as RunRow

    return RunRow.objects.get(pk=run_id)


@real_gateway
def test_a_well_behaved_run_finishes_ok(gateway):
    from agents.models import ToolCall

    search = Impl(output={"hits": ["kb-12"]})
    with gateway.run("how do refunds work?", budgets=Budgets(), agent_version="v1") as run:
        run.step(model="small", tokens_in=100, tokens_out=20, usd=0.001, summary="search")
        hits = run.tool("search.read", {"q": "refunds"}, search)
        run.answer = f"see {hits['hits'][0]}"

    row = db_run(run.id)
    assert (row.status, row.stop_reason, row.answer) == ("succeeded", "ok", "see kb-12")
    assert (row.steps, row.tool_calls, row.tokens) == (1, 1, 120)
    call = ToolCall.objects.get(run=row)
    assert (call.decision, call.result_ok, call.output) == ("allow", True, {"hits": ["kb-12"]})
    assert call.latency_ms is not None
    assert run.stop_reason == "ok"


@real_gateway
def test_it_stops_the_run_at_the_sixteenth_tool_call(gateway):
    browse = Impl(output={"status": 503, "body": "vendor outage"})

    with pytest.raises(Stop) as stopped, gateway.run("compare prices") as run:
        for attempt in range(1, 100):
            run.tool("search.read", {"q": "prices", "attempt": attempt}, browse)

    assert stopped.value.reason == "max_tool_calls"
    assert len(browse.calls) == 15
    row = db_run(run.id)
    assert (row.status, row.stop_reason, row.tool_calls) == ("stopped", "max_tool_calls", 15)


@real_gateway
def test_a_tool_off_the_allowlist_is_denied_without_running(gateway):
    browse = Impl()

    with pytest.raises(Stop) as stopped, gateway.run("look at the vendor site") as run:
        run.tool("browser.open", {"url": "https://vendor.example"}, browse)

    assert stopped.value.reason == "tool_denied:browser.open"
    assert browse.calls == []
    row = db_run(run.id)
    assert (row.status, row.stop_reason, row.tool_calls) == (
        "stopped",
        "tool_denied:browser.open",
        0,
    )


@real_gateway
def test_a_failing_block_finishes_the_run_failed(gateway):
    with pytest.raises(ConnectionError), gateway.run("read the kb") as run:
        run.tool("kb.read", {"id": 1}, Impl(error=ConnectionError("kb down")))

    row = db_run(run.id)
    assert (row.status, row.stop_reason) == ("failed", "error")
    assert row.error == "ConnectionError: kb down"


@real_gateway
def test_a_lost_answer_is_retried_without_spending_twice(agent, wsgi_transport):
    from agents.models import ToolCall

    class LosesFirstToolCallAnswer(httpx.BaseTransport):
        lost = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = wsgi_transport.handle_request(request)
            if request.url.path.endswith("/tool-calls") and not self.lost:
                self.lost += 1
                raise httpx.ReadTimeout("the answer was lost on the way back")
            return response

    search = Impl()
    with (
        Gateway("http://testserver", agent.key, transport=LosesFirstToolCallAnswer()) as client,
        client.run("search once") as run,
    ):
        run.tool("search.read", {"q": "once"}, search)

    assert len(search.calls) == 1
    assert db_run(run.id).tool_calls == 1
    assert ToolCall.objects.filter(run_id=run.id).count() == 1


@real_gateway
def test_a_run_refused_by_the_kill_switch_raises_kill_switch(gateway):
    from agents.policy.services import kill_switch_set

    kill_switch_set(mode="stop_all", reason="incident drill", actor="system")

    with pytest.raises(Stop) as stopped:
        gateway.run("anything")

    assert stopped.value.reason == "kill_switch"
    assert stopped.value.status_code == 409


def decide_when_pending(run_id: int, reviewer, verdict: str, comment: str) -> threading.Thread:
    """A reviewer in another thread: waits for the run's request, then decides it."""
    from django.db import connection

    from approvals.models import ApprovalRequest
    from approvals.services import approval_decide

    def review() -> None:
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                request = ApprovalRequest.objects.filter(run_id=run_id, status="pending").first()
                if request is not None:
                    time.sleep(0.5)  # let the agent settle into its long-poll
                    approval_decide(
                        request_id=request.pk, reviewer=reviewer, verdict=verdict, comment=comment
                    )
                    return
                time.sleep(0.05)
        finally:
            connection.close()

    thread = threading.Thread(target=review, daemon=True)
    thread.start()
    return thread


@real_gateway
def test_an_approved_write_proceeds_and_runs_once(gateway, publish_policy, reviewer):
    from approvals.models import ApprovalRequest

    publish_policy(EMAIL_POLICY)
    send = Impl(output={"message_id": "m-1"})

    with gateway.run("tell the customer") as run:
        thread = decide_when_pending(run.id, reviewer.user, "approve", "looks right")
        assert run.tool("email.send", EMAIL, send) == {"message_id": "m-1"}
    thread.join(timeout=5)

    assert send.calls == [EMAIL]
    row = db_run(run.id)
    assert (row.status, row.stop_reason) == ("succeeded", "ok")
    assert ApprovalRequest.objects.get(run_id=run.id).status == "approved"


@real_gateway
def test_a_rejected_write_stops_with_approval_rejected(gateway, publish_policy, reviewer):
    publish_policy(EMAIL_POLICY)
    send = Impl()

    with pytest.raises(Stop) as stopped, gateway.run("tell the customer") as run:
        thread = decide_when_pending(run.id, reviewer.user, "reject", "wrong customer")
        run.tool("email.send", EMAIL, send)
    thread.join(timeout=5)

    assert stopped.value.reason == "approval_rejected:email.send"
    assert send.calls == []
    row = db_run(run.id)
    assert (row.status, row.stop_reason) == ("stopped", "approval_rejected:email.send")
