"""The Python client (``opsconsole_client``) against a scripted gateway (httpx.MockTransport):
it speaks the protocol and fails closed on every doubt. (tests/client/test_end_to_end.py drives
the real gateway; test_stop.py, test_retries.py, test_step_gate.py, test_async.py the rest.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from opsconsole_client import (
    CONTROL_PLANE_UNAVAILABLE,
    PROTOCOL_ERROR,
    Budgets,
    Gateway,
    Interrupted,
    Stop,
)
from tests.client.conftest import Impl
from tests.client.scripted import pending_json, run_json, started_run, tool_call_json

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("status", [503, 500, 502])
def test_a_5xx_on_a_tool_call_is_a_stop_and_the_tool_never_runs(scripted, status):
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        status, json={"error": "control_plane_unavailable", "detail": "database down"}
    )
    impl = Impl()
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "refunds"}, impl)

    assert stopped.value.reason == CONTROL_PLANE_UNAVAILABLE
    assert stopped.value.status_code == status
    assert impl.calls == []
    assert len(scripted.sent("POST /api/v1/runs/7/tool-calls")) == 1  # a 5xx is not retried


def test_a_503_when_starting_a_run_is_a_stop(scripted):
    scripted.routes["POST /api/v1/runs"] = lambda r: httpx.Response(503, text="Service Unavailable")

    with pytest.raises(Stop) as stopped:
        scripted.gateway().run("task")

    assert stopped.value.reason == CONTROL_PLANE_UNAVAILABLE


def test_an_answer_that_is_not_json_is_a_stop(scripted):
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        200, text="<html>proxy error</html>", headers={"Content-Type": "text/html"}
    )
    impl = Impl()
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "refunds"}, impl)

    assert stopped.value.reason == PROTOCOL_ERROR
    assert impl.calls == []


@pytest.mark.parametrize(
    "answer",
    [
        tool_call_json(decision="maybe"),
        tool_call_json(decision="ALLOW"),
        tool_call_json(decision=None),
        tool_call_json(decision="stop", stop_reason=None),
        tool_call_json(decision="allow", id=None),
        tool_call_json(decision="allow", stop_reason="max_tool_calls"),
        tool_call_json(decision="allow", tool="browser.open"),
        tool_call_json(decision="allow", run=None),
        tool_call_json(decision="pending_approval"),  # no approval, so no expiry to wait for
        {"decision": "allow"},
        [],
    ],
    ids=[
        "unknown",
        "wrong-case",
        "missing",
        "stop-without-reason",
        "allow-without-id",
        "allow-with-stop-reason",
        "another-tool",
        "no-run",
        "pending-without-expiry",
        "bare",
        "not-an-object",
    ],
)
def test_an_answer_it_cannot_interpret_is_a_stop_and_the_tool_never_runs(scripted, answer):
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(200, json=answer)
    impl = Impl()
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "refunds"}, impl)

    assert stopped.value.reason == PROTOCOL_ERROR
    assert impl.calls == []


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("eof")],
    ids=["connect", "timeout", "dropped"],
)
def test_a_transport_error_is_a_stop_after_its_retries_with_the_same_key(scripted, error):
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    scripted.routes["POST /api/v1/runs/7/tool-calls"] = fail
    impl = Impl()
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "refunds"}, impl)

    assert stopped.value.reason == CONTROL_PLANE_UNAVAILABLE
    assert impl.calls == []
    attempts = scripted.sent("POST /api/v1/runs/7/tool-calls")
    assert len(attempts) == 3  # RetryPolicy().attempts
    assert len({attempt["idempotency_key"] for attempt in attempts}) == 1


def test_a_lost_answer_is_retried_with_the_same_key_and_the_tool_runs_once(scripted):
    lost = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if not lost:
            lost.append(request)
            raise httpx.ReadTimeout("answer lost")
        return httpx.Response(200, json=tool_call_json())

    scripted.routes["POST /api/v1/runs/7/tool-calls"] = flaky
    impl = Impl(output={"hits": 3})
    run = started_run(scripted)

    assert run.tool("search.read", {"q": "refunds"}, impl) == {"hits": 3}

    keys = [body["idempotency_key"] for body in scripted.sent("POST /api/v1/runs/7/tool-calls")]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert impl.calls == [{"q": "refunds"}]


def test_each_tool_call_gets_its_own_idempotency_key(scripted):
    run = started_run(scripted)
    run.tool("search.read", {"q": "a"}, Impl())
    run.tool("search.read", {"q": "b"}, Impl())

    keys = [body["idempotency_key"] for body in scripted.sent("POST /api/v1/runs/7/tool-calls")]
    assert len(set(keys)) == 2


def test_connection_refused_when_starting_a_run_is_a_stop():
    gateway = Gateway("http://127.0.0.1:9", "aok_test", timeout=2)  # nothing listens on port 9

    with pytest.raises(Stop) as stopped:
        gateway.run("task")

    assert stopped.value.reason == CONTROL_PLANE_UNAVAILABLE


def test_a_stop_decision_raises_the_gateways_reason(scripted):
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        200,
        json=tool_call_json(
            decision="stop", stop_reason="max_tool_calls", id=12, run=run_json(status="stopped")
        ),
    )
    impl = Impl()
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped, run:
        run.tool("search.read", {"q": "refunds"}, impl)

    assert stopped.value.reason == "max_tool_calls"
    assert impl.calls == []
    assert run.stop_reason == "max_tool_calls"
    assert scripted.sent("POST /api/v1/runs/7/finish") == []  # already stopped: no finish


def test_a_4xx_error_is_a_stop_named_by_its_code(scripted):
    scripted.routes["POST /api/v1/runs"] = lambda r: httpx.Response(
        401, json={"error": "unauthenticated", "detail": "Unknown or revoked key."}
    )

    with pytest.raises(Stop) as stopped:
        scripted.gateway().run("task")

    assert stopped.value.reason == "unauthenticated"
    assert stopped.value.status_code == 401


def test_a_refused_run_raises_the_stop_reason_of_the_409(scripted):
    scripted.routes["POST /api/v1/runs"] = lambda r: httpx.Response(
        409,
        json={"error": "run_refused", "detail": "stop_all", "stop_reason": "kill_switch"},
    )

    with pytest.raises(Stop) as stopped:
        scripted.gateway().run("task")

    assert stopped.value.reason == "kill_switch"


def test_a_4xx_without_the_error_shape_is_a_protocol_error(scripted):
    scripted.routes["POST /api/v1/runs"] = lambda r: httpx.Response(404, text="Not Found")

    with pytest.raises(Stop) as stopped:
        scripted.gateway().run("task")

    assert stopped.value.reason == PROTOCOL_ERROR


def test_a_step_stop_decision_raises_stop(scripted):
    scripted.routes["POST /api/v1/runs/7/steps"] = lambda r: httpx.Response(
        200,
        json={"decision": "stop", "stop_reason": "max_steps", "run": run_json(status="stopped")},
    )
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.step(model="m", tokens_in=10, tokens_out=2, usd=0.01)

    assert stopped.value.reason == "max_steps"
    assert scripted.sent("POST /api/v1/runs/7/steps") == [
        {
            "kind": "llm",
            "model": "m",
            "tokens_in": 10,
            "tokens_out": 2,
            "usd": "0.010000",
            "latency_ms": 0,
            "summary": "",
        }
    ]


def test_step_costs_are_sent_with_the_six_decimals_the_gateway_accepts(scripted):
    run = started_run(scripted)

    run.step(usd=0.1 + 0.2)  # 0.30000000000000004
    run.step(usd=Decimal("0.0000004"))

    assert [body["usd"] for body in scripted.sent("POST /api/v1/runs/7/steps")] == [
        "0.300000",
        "0.000000",
    ]
    with pytest.raises(ValueError, match="finite"):
        run.step(usd=float("nan"))


def test_an_unknown_step_decision_is_a_stop(scripted):
    scripted.routes["POST /api/v1/runs/7/steps"] = lambda r: httpx.Response(
        200, json={"decision": "carry_on", "stop_reason": None, "run": run_json()}
    )
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.step()

    assert stopped.value.reason == PROTOCOL_ERROR


def test_a_result_answer_with_a_stop_reason_raises_stop(scripted):
    scripted.routes["POST /api/v1/tool-calls/11/result"] = lambda r: httpx.Response(
        200,
        json={
            "valid": False,
            "stop_reason": "invalid_tool_output:search.read",
            "errors": ["(root): 'hits' is a required property"],
            "run": run_json(status="stopped", stop_reason="invalid_tool_output:search.read"),
        },
    )
    impl = Impl(output={"nothing": True})
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "x"}, impl)

    assert stopped.value.reason == "invalid_tool_output:search.read"
    assert len(impl.calls) == 1


def test_the_result_reports_output_and_latency(scripted):
    run = started_run(scripted)

    assert run.tool("search.read", {"q": "x"}, Impl(output={"hits": [1, 2]})) == {"hits": [1, 2]}

    (report,) = scripted.sent("POST /api/v1/tool-calls/11/result")
    assert report["ok"] is True
    assert report["output"] == {"hits": [1, 2]}
    assert isinstance(report["latency_ms"], int)


def test_a_failing_tool_is_reported_and_its_exception_reraised(scripted):
    run = started_run(scripted)

    with pytest.raises(ConnectionError, match="vendor down"):
        run.tool("search.read", {"q": "x"}, Impl(error=ConnectionError("vendor down")))

    (report,) = scripted.sent("POST /api/v1/tool-calls/11/result")
    assert report["ok"] is False
    assert report["error"] == "ConnectionError: vendor down"


def test_leaving_the_block_normally_finishes_succeeded_with_the_answer(scripted):
    with started_run(scripted) as run:
        run.answer = "42"

    assert scripted.sent("POST /api/v1/runs/7/finish") == [{"status": "succeeded", "answer": "42"}]
    assert run.stop_reason == "ok"


def test_an_exception_in_the_block_finishes_failed_and_propagates(scripted):
    scripted.routes["POST /api/v1/runs/7/finish"] = lambda r: httpx.Response(
        200, json=run_json(status="failed", stop_reason="error")
    )

    with pytest.raises(ValueError, match="bad plan"), started_run(scripted):
        raise ValueError("bad plan")

    assert scripted.sent("POST /api/v1/runs/7/finish") == [
        {"status": "failed", "error": "ValueError: bad plan"}
    ]


def test_a_finish_refused_because_the_run_was_stopped_raises_its_stop_reason(scripted):
    scripted.routes["POST /api/v1/runs/7/finish"] = lambda r: httpx.Response(
        409, json={"error": "run_ended", "detail": "ended", "stop_reason": "cancelled"}
    )

    with pytest.raises(Stop) as stopped, started_run(scripted):
        pass

    assert stopped.value.reason == "cancelled"


def test_a_pending_approval_is_long_polled_until_allowed(scripted):
    answers = iter(
        [
            pending_json(datetime.now(UTC) + timedelta(minutes=2)),
            tool_call_json(decision="allow", tool="email.send"),
        ]
    )
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        200, json=pending_json(datetime.now(UTC) + timedelta(minutes=2))
    )
    scripted.routes["GET /api/v1/tool-calls/11"] = lambda r: httpx.Response(200, json=next(answers))
    impl = Impl(output={"sent": True})
    run = started_run(scripted)

    assert run.tool("email.send", {"to": "a@b.c"}, impl) == {"sent": True}

    polls = [r for r in scripted.requests if r.method == "GET"]
    assert [r.url.params["wait"] for r in polls] == ["25", "25"]
    assert len(impl.calls) == 1


def test_waiting_for_an_approval_gives_up_after_its_expiry(scripted):
    expired = datetime.now(UTC) - timedelta(seconds=5)
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        200, json=pending_json(expired)
    )
    scripted.routes["GET /api/v1/tool-calls/11"] = lambda r: httpx.Response(
        200, json=pending_json(expired)
    )
    impl = Impl()
    run = started_run(scripted, approval_margin_seconds=1)

    started = time.monotonic()
    with pytest.raises(Stop) as stopped:
        run.tool("email.send", {"to": "a@b.c"}, impl)

    assert stopped.value.reason == "approval_timeout:email.send"
    assert time.monotonic() - started < 5
    assert impl.calls == []


def test_an_interrupt_ends_the_wait_and_the_run_is_finished_failed(scripted):
    interrupt = threading.Event()
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        200, json=pending_json(datetime.now(UTC) + timedelta(minutes=2))
    )

    def poll(request: httpx.Request) -> httpx.Response:
        interrupt.set()  # e.g. Ctrl-C arrived while the server held this poll
        return httpx.Response(200, json=pending_json(datetime.now(UTC) + timedelta(minutes=2)))

    scripted.routes["GET /api/v1/tool-calls/11"] = poll
    scripted.routes["POST /api/v1/runs/7/finish"] = lambda r: httpx.Response(
        200, json=run_json(status="failed", stop_reason="error")
    )
    impl = Impl()

    with pytest.raises(Interrupted), started_run(scripted, interrupt=interrupt) as run:
        run.tool("email.send", {"to": "a@b.c"}, impl)

    assert impl.calls == []
    assert [body["status"] for body in scripted.sent("POST /api/v1/runs/7/finish")] == ["failed"]


def test_budgets_send_only_what_is_set():
    assert Budgets().as_json() == {"max_steps": 30, "max_seconds": 90, "max_tool_calls": 15}
    assert Budgets(max_usd=2.5, max_steps=None).as_json() == {
        "max_seconds": 90,
        "max_tool_calls": 15,
        "max_usd": 2.5,
    }


def test_the_client_imports_without_django():
    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import sys; import opsconsole_client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
