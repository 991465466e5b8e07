"""Abuse limits: per-agent rate limits (429 + Retry-After), argument and body size caps, hostile
JSON, and the throttled web login."""

from __future__ import annotations

import logging
import random

import pytest
from django.contrib.auth.views import LoginView
from django.urls import resolve, reverse

from agents.models import Run, ToolCall
from opsconsole import limits, login
from opsconsole.login import ThrottledLoginView

POLICY = """
tools:
  allow: ["kb.read"]
budgets: {max_tool_calls: 100, max_steps: 100, max_seconds: 600}
loop: {max_repeats: 100}
"""


@pytest.fixture
def clock(rate_clock, monkeypatch):
    """The rate limits' stopped clock (``rate_clock``), the login lockout's too."""
    monkeypatch.setattr(login, "_clock", lambda: rate_clock[0])
    return rate_clock


@pytest.fixture
def tight_limits(settings, clock):
    settings.OPSCONSOLE_RATE_LIMITS = {"runs": "3/min", "tool_calls": "5/min"}
    limits.cache_health.reset()
    yield settings
    limits.cache_health.reset()


def test_the_fourth_run_in_a_minute_is_refused_with_429_and_retry_after(
    agent, outsider_agent, tight_limits, clock
):
    clock[0] = 60 * random.randint(10**6, 10**7) + 45.2  # 45.2 s into a minute window
    for i in range(3):
        assert agent.api.post_json("/api/v1/runs", {"task": f"t{i}"}).status_code == 201

    response = agent.api.post_json("/api/v1/runs", {"task": "one too many"})

    assert response.status_code == 429
    assert response.json()["error"] == "rate_limited"
    assert response["Retry-After"] == "15"
    assert Run.objects.filter(agent=agent.agent).count() == 3
    # The limit is per agent: another agent is not held back.
    assert outsider_agent.api.post_json("/api/v1/runs", {"task": "x"}).status_code == 201


def test_the_limit_lifts_when_the_window_ends(agent, tight_limits, clock):
    clock[0] = 60 * random.randint(10**6, 10**7) + 10.0
    for i in range(3):
        agent.api.post_json("/api/v1/runs", {"task": f"t{i}"})
    assert agent.api.post_json("/api/v1/runs", {"task": "refused"}).status_code == 429

    clock[0] += 50.0

    assert agent.api.post_json("/api/v1/runs", {"task": "next minute"}).status_code == 201


def test_tool_calls_over_the_rate_are_refused_before_they_are_decided(
    agent, publish_policy, start_run, tight_limits
):
    publish_policy(POLICY)
    run = start_run()
    path_ = f"/api/v1/runs/{run['id']}/tool-calls"
    for i in range(5):
        response = agent.api.post_json(path_, {"tool": "kb.read", "args": {"i": i}})
        assert response.json()["decision"] == "allow"

    response = agent.api.post_json(path_, {"tool": "kb.read", "args": {"i": 99}})

    assert response.status_code == 429
    assert response.json()["error"] == "rate_limited"
    assert int(response["Retry-After"]) >= 1
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.tool_calls, db_run.status) == (5, "running")
    assert ToolCall.objects.filter(run=db_run).count() == 5


def test_rate_limits_can_be_turned_off(agent, settings, clock):
    settings.OPSCONSOLE_RATE_LIMITS = {"runs": None, "tool_calls": None}
    statuses = {
        agent.api.post_json("/api/v1/runs", {"task": f"t{i}"}).status_code for i in range(8)
    }
    assert statuses == {201}


def test_rate_limiting_fails_open_when_the_cache_is_down(agent, settings, clock, caplog):
    """The gateway keeps deciding without Redis: the limiter allows and says so once."""
    settings.OPSCONSOLE_RATE_LIMITS = {"runs": "1/min", "tool_calls": "1/min"}
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        # Nothing listens on port 1: every cache call fails at once.
        "dead": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        },
    }
    settings.OPSCONSOLE_RATE_LIMIT_CACHE = "dead"
    limits.cache_health.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="opsconsole.limits"):
            statuses = [
                agent.api.post_json("/api/v1/runs", {"task": f"t{i}"}).status_code for i in range(3)
            ]
    finally:
        limits.cache_health.reset()

    assert statuses == [201, 201, 201]
    warnings = [r for r in caplog.records if "rate limiting is off" in r.getMessage()]
    assert len(warnings) == 1


def test_oversized_tool_arguments_get_413_args_too_large_and_spend_nothing(
    agent, publish_policy, start_run, settings
):
    publish_policy(POLICY)
    settings.OPSCONSOLE_MAX_ARGS_BYTES = 1000
    run = start_run()

    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": "x" * 2000}}
    )

    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "args_too_large"
    assert body["limit_bytes"] == 1000 and body["size_bytes"] > 1000
    assert "over the cap of 1000" in body["detail"]
    assert Run.objects.get(pk=run["id"]).tool_calls == 0
    assert not ToolCall.objects.filter(run_id=run["id"]).exists()


def test_arguments_under_the_cap_are_decided(agent, publish_policy, start_run, settings):
    publish_policy(POLICY)
    settings.OPSCONSOLE_MAX_ARGS_BYTES = 1000
    run = start_run()
    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": "x" * 900}}
    )
    assert response.status_code == 200
    assert response.json()["decision"] == "allow"


def test_an_output_over_its_cap_stops_the_run_with_invalid_tool_output(
    agent, publish_policy, start_run
):
    publish_policy(
        """
tools:
  allow: ["kb.read"]
  definitions:
    kb.read: {effect: read, max_output_bytes: 100}
budgets: {max_tool_calls: 10, max_steps: 10, max_seconds: 600}
"""
    )
    run = start_run()
    call = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    ).json()

    response = agent.api.post_json(
        f"/api/v1/tool-calls/{call['id']}/result", {"ok": True, "output": {"text": "y" * 500}}
    )

    assert response.status_code == 200
    assert response.json()["stop_reason"] == "invalid_tool_output:kb.read"
    assert Run.objects.get(pk=run["id"]).stop_reason == "invalid_tool_output:kb.read"


def test_a_body_over_the_cap_gets_413_before_it_is_read(agent, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = agent.api.post_json("/api/v1/runs", {"task": "x" * 20_000})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    "body",
    [
        "[" * 50_000 + "]" * 50_000,  # nesting deep enough to blow Python's recursion limit
        '{"task": "x", "metadata": ' + '{"a": ' * 5_000 + "1" + "}" * 5_001,
        '{"task": "x", "metadata": ' + '{"a": ' * 70 + "1" + "}" * 71,  # parses, too deep
        '{"task": "\\ud800"}',  # a lone surrogate
        '{"task": "a\\u0000b"}',  # PostgreSQL cannot store NUL: a 400, not a 503
        '{"task": "x", "metadata": {"k\\u0000": 1}}',
        '{"task": NaN}',
        "\xff\xfe",
    ],
    ids=[
        "deep-array",
        "deep-object",
        "deep-70",
        "lone-surrogate",
        "nul",
        "nul-key",
        "nan",
        "not-utf8",
    ],
)
def test_hostile_json_bodies_get_a_4xx_never_a_500(agent, body):
    response = agent.api.post(
        "/api/v1/runs", body.encode("utf-8", "surrogatepass"), content_type="application/json"
    )
    assert 400 <= response.status_code < 500, response.content
    assert "error" in response.json()


# --- the web login ----------------------------------------------------------------------------


@pytest.fixture
def login_client(client, settings, clock):
    settings.OPSCONSOLE_LOGIN_MAX_FAILURES = 3
    # Unknown usernames are checked against the first hasher: a fast one keeps the test quick.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]
    return client


def _login(client, username: str, password: str):
    return client.post("/login/", {"username": username, "password": password})


def test_the_console_login_is_the_stock_view_with_a_lockout():
    assert issubclass(ThrottledLoginView, LoginView)
    assert resolve(reverse("login")).func.view_class is ThrottledLoginView


def test_repeated_failed_logins_lock_the_username_out_even_for_the_right_password(
    login_client, oncall, clock
):
    clock[0] = 900 * random.randint(10**6, 10**7) + 300.0  # 5 minutes into a 15-minute window
    for _ in range(3):
        response = _login(login_client, oncall.user.username, "wrong")
        assert response.status_code == 200
        assert "_auth_user_id" not in login_client.session

    response = _login(login_client, oncall.user.username, oncall.password)

    assert response.status_code == 429
    assert response["Retry-After"] == "600"
    assert b"Too many failed sign-ins. Try again in 10 minutes." in response.content
    assert "_auth_user_id" not in login_client.session


def test_the_lockout_ends_with_its_window(login_client, oncall, clock):
    clock[0] = 900 * random.randint(10**6, 10**7) + 10.0
    for _ in range(3):
        _login(login_client, oncall.user.username, "wrong")
    assert _login(login_client, oncall.user.username, oncall.password).status_code == 429

    clock[0] += 900

    response = _login(login_client, oncall.user.username, oncall.password)
    assert response.status_code == 302
    assert login_client.session["_auth_user_id"] == str(oncall.user.pk)


def test_a_successful_login_clears_the_failures(login_client, oncall):
    for _ in range(2):
        _login(login_client, oncall.user.username, "wrong")
    assert _login(login_client, oncall.user.username, oncall.password).status_code == 302
    login_client.logout()

    for _ in range(2):
        assert _login(login_client, oncall.user.username, "wrong").status_code == 200
    assert _login(login_client, oncall.user.username, oncall.password).status_code == 302


def test_one_address_trying_many_usernames_is_locked_out(login_client, oncall):
    # 3 failures per username, 12 per address.
    for i in range(12):
        assert _login(login_client, f"guess-{i}", "wrong").status_code == 200

    response = _login(login_client, oncall.user.username, oncall.password)

    assert response.status_code == 429


@pytest.mark.parametrize("usd", [1e308, -1.7634394084171898e308, 1e30])
def test_a_cost_too_large_to_round_is_a_400_not_a_500(agent, start_run, usd):
    """Found by the API fuzzer: rounding 1e308 to micro-dollars raised InvalidOperation."""
    run = start_run()
    response = agent.api.post_json(f"/api/v1/runs/{run['id']}/steps", {"usd": usd})
    assert response.status_code == 400
    assert response.json()["error"] == "malformed"
    assert Run.objects.get(pk=run["id"]).steps == 0


@pytest.mark.parametrize(
    "budgets",
    [{"max_usd": 1e300}, {"max_steps": 10**12}, {"max_tool_calls": 2**31}, {"max_tokens": 2**64}],
)
def test_budgets_larger_than_the_columns_hold_are_a_400(agent, budgets):
    """Found by the API fuzzer: SQLite stored max_usd=1e300, then every read of the run 500ed."""
    response = agent.api.post_json("/api/v1/runs", {"task": "t", "budgets": budgets})
    assert response.status_code == 400
    assert response.json()["error"] == "malformed"
    assert not Run.objects.filter(agent=agent.agent).exists()
