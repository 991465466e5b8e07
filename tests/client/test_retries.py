"""Honest retries: a 429's Retry-After is honoured within a bounded wait, transport errors are
retried with exponential backoff and jitter (only requests that are safe to repeat), and a 503
is still a stop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from opsconsole_client import CONTROL_PLANE_UNAVAILABLE, RetryPolicy, Stop
from tests.client.conftest import Impl
from tests.client.scripted import started_run, tool_call_json

TOOL_CALLS = "POST /api/v1/runs/7/tool-calls"


def rate_limited(retry_after: str | None):
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(
        429,
        json={"error": "rate_limited", "detail": "Request was throttled."},
        headers=headers,
    )


def limited_then_allowed(times: int, retry_after: str | None = "2"):
    answers = [rate_limited(retry_after) for _ in range(times)]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else httpx.Response(200, json=tool_call_json())

    return handler


def test_a_429_waits_its_retry_after_and_the_call_goes_through(scripted):
    scripted.routes[TOOL_CALLS] = limited_then_allowed(2, retry_after="3")
    impl = Impl(output={"hits": 1})
    run = started_run(scripted)

    assert run.tool("search.read", {"q": "x"}, impl) == {"hits": 1}

    assert scripted.sleeps == [3.0, 3.0]
    assert len(scripted.sent(TOOL_CALLS)) == 3
    assert len(impl.calls) == 1


def test_a_retry_after_as_an_http_date_is_honoured(scripted):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
    scripted.routes[TOOL_CALLS] = limited_then_allowed(1, retry_after=when)
    run = started_run(scripted)

    run.tool("search.read", {"q": "x"}, Impl())

    (waited,) = scripted.sleeps
    assert 2.0 <= waited <= 4.0


def test_waits_past_the_bound_are_a_rate_limited_stop(scripted):
    scripted.routes[TOOL_CALLS] = limited_then_allowed(5, retry_after="20")
    impl = Impl()
    run = started_run(scripted, retry_policy=RetryPolicy(max_retry_after_seconds=45))

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "x"}, impl)

    assert (stopped.value.reason, stopped.value.status_code) == ("rate_limited", 429)
    assert scripted.sleeps == [20.0, 20.0]  # a third wait would pass 45 s in all
    assert impl.calls == []


def test_a_retry_after_longer_than_the_bound_is_not_waited_at_all(scripted):
    scripted.routes[TOOL_CALLS] = limited_then_allowed(1, retry_after="600")
    run = started_run(scripted, retry_policy=RetryPolicy(max_retry_after_seconds=30))

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "x"}, Impl())

    assert stopped.value.reason == "rate_limited"
    assert scripted.sleeps == []


def test_a_429_without_retry_after_is_a_stop(scripted):
    scripted.routes[TOOL_CALLS] = limited_then_allowed(1, retry_after=None)
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "x"}, Impl())

    assert stopped.value.reason == "rate_limited"


def test_a_503_is_a_stop_at_once_never_retried(scripted):
    scripted.routes[TOOL_CALLS] = lambda r: httpx.Response(
        503,
        json={"error": "control_plane_unavailable", "detail": "database down"},
        headers={"Retry-After": "1"},
    )
    impl = Impl()
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.tool("search.read", {"q": "x"}, impl)

    assert (stopped.value.reason, stopped.value.status_code) == (CONTROL_PLANE_UNAVAILABLE, 503)
    assert len(scripted.sent(TOOL_CALLS)) == 1
    assert scripted.sleeps == [] and impl.calls == []


def test_transport_errors_back_off_exponentially_with_jitter(scripted):
    failures = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if len(failures) < 4:
            failures.append(request)
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=tool_call_json())

    scripted.routes[TOOL_CALLS] = flaky
    policy = RetryPolicy(attempts=5, backoff_base=0.5, backoff_max=3.0)
    run = started_run(scripted, retry_policy=policy)

    run.tool("search.read", {"q": "x"}, Impl())

    # Before retry n: between half and all of min(3.0, 0.5 * 2**(n-1)).
    ceilings = [0.5, 1.0, 2.0, 3.0]
    assert len(scripted.sleeps) == 4
    for waited, ceiling in zip(scripted.sleeps, ceilings, strict=True):
        assert ceiling / 2 <= waited <= ceiling
    keys = {body["idempotency_key"] for body in scripted.sent(TOOL_CALLS)}
    assert len(keys) == 1  # every retry carries the first key


def test_the_jitter_spreads_the_waits():
    policy = RetryPolicy(backoff_base=1.0)

    assert policy.transport_delay(1, jitter=lambda: 0.0) == 0.5
    assert policy.transport_delay(1, jitter=lambda: 1.0) == 1.0
    assert policy.transport_delay(2, jitter=lambda: 0.5) == 1.5
    assert policy.transport_delay(3) is None  # three attempts in all by default


def test_a_request_that_is_not_safe_to_repeat_is_not_retried(scripted):
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("answer lost")

    scripted.routes["POST /api/v1/runs/7/steps"] = lost
    run = started_run(scripted)

    with pytest.raises(Stop) as stopped:
        run.step(model="m", tokens_in=10)  # the older step report carries no idempotency key

    assert stopped.value.reason == CONTROL_PLANE_UNAVAILABLE
    assert len(scripted.sent("POST /api/v1/runs/7/steps")) == 1
    assert scripted.sleeps == []


# --- against the real gateway's rate limit --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_gateways_429_carries_retry_after_and_the_client_waits_it_out(
    agent, settings, monkeypatch
):
    """Five tool calls a minute: the sixth waits for the next window instead of stopping."""
    from django.core.cache import caches
    from django.core.wsgi import get_wsgi_application

    from opsconsole import limits
    from opsconsole_client import Gateway

    settings.OPSCONSOLE_RATE_LIMITS = {**settings.OPSCONSOLE_RATE_LIMITS, "tool_calls": "5/min"}
    caches[settings.OPSCONSOLE_RATE_LIMIT_CACHE].clear()
    now = [1_800_000_000.0]  # the start of a minute
    monkeypatch.setattr(limits, "_clock", lambda: now[0])
    answers = []

    class Recording(httpx.WSGITransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            answers.append((response.status_code, response.headers.get("Retry-After")))
            return response

    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds  # the server's clock moves on while the client waits

    search = Impl()
    with Gateway(
        "http://testserver",
        agent.key,
        transport=Recording(app=get_wsgi_application()),
        retry_policy=RetryPolicy(max_retry_after_seconds=60),
    ) as gateway:
        gateway.sleep = sleep
        with gateway.run("six searches") as run:
            for n in range(6):
                run.tool("search.read", {"q": f"query {n}"}, search)

    assert len(search.calls) == 6
    assert (429, "60") in answers
    assert waits == [60.0]
    assert run.stop_reason == "ok"
