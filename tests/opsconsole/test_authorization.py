"""The authorization matrix: every URL the resolver knows × every kind of caller.

The routes are enumerated from the URL resolver, so a new endpoint cannot be forgotten: an API
route without a row in ``API_EXPECTATIONS`` fails ``test_every_api_route_has_expectations``, and a
web page without a role check fails unless it is listed in ``PUBLIC_PAGES``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from agents.gateway import services as gateway_services
from agents.models import AgentKey, KillSwitch, Run
from agents.registry import services as registry_services
from approvals.models import ApprovalRequest
from opsconsole import roles
from tests.conftest import JsonClient

ROOT = Path(__file__).resolve().parents[2]

POLICY = """
tools:
  allow: ["kb.read", "email.send"]
  definitions:
    email.send: {effect: write}
budgets: {max_tool_calls: 50, max_steps: 50, max_seconds: 600}
"""


@dataclass(frozen=True)
class Route:
    name: str
    pattern: str
    callback: Any


def _walk(patterns: list, prefix: str = "", namespace: str = "") -> Iterator[Route]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), inner)
        elif isinstance(entry, URLPattern):
            yield Route(
                f"{namespace}{entry.name or ''}", prefix + str(entry.pattern), entry.callback
            )


ROUTES = list(_walk(get_resolver().url_patterns))
API_ROUTES = [r for r in ROUTES if r.name.startswith("api:")]
ADMIN_SITE_ROUTES = [r for r in ROUTES if r.name.startswith("admin:")]
WEB_ROUTES = [r for r in ROUTES if r not in API_ROUTES and r not in ADMIN_SITE_ROUTES]

# Web routes with no role check, and why.
PUBLIC_PAGES = {
    "login": "the login form",
    "logout": "logging out",
    "healthz": "the load balancer's health check (no data)",
    "favicon": "the browser tab icon, a redirect to a static file (no data)",
    "metrics": "Prometheus scrape; closed by OPSCONSOLE_METRICS_TOKEN when set",
    "otlp-traces": "OTLP/HTTP receiver: an agent key, not a role (tests/telemetry/test_receiver.py)",
    "otlp-metrics": "OTLP/HTTP: refuses metrics (404) after checking the agent key, as traces",
    "otlp-logs": "OTLP/HTTP: refuses logs (404) after checking the agent key, as traces",
}

PERSONAS = (
    "anonymous",
    "agent",
    "other_agent",
    "revoked_agent_key",
    "outsider",
    "revoked_user_token",
    "oncall",
    "reviewer",
    "admin",
)
PEOPLE_WITH_ROLES = ("oncall", "reviewer", "admin")
UNAUTHENTICATED = {"anonymous": 401, "revoked_agent_key": 401, "revoked_user_token": 401}


def _expect(**statuses: int) -> dict[str, int]:
    """Fill in the callers that are refused the same way everywhere."""
    return {**UNAUTHENTICATED, **statuses}


AGENT_ONLY_OBJECT = _expect(
    agent=200, other_agent=404, outsider=403, oncall=403, reviewer=403, admin=403
)
PEOPLE_ONLY = {"agent": 403, "other_agent": 403, "outsider": 403}

# (route name, method) -> (request body, {persona: status}); path ids are the agent's objects.
API_EXPECTATIONS: dict[tuple[str, str], tuple[dict | None, dict[str, int]]] = {
    ("api:run-create", "post"): (
        {"task": "t"},
        _expect(agent=201, other_agent=201, outsider=403, oncall=403, reviewer=403, admin=403),
    ),
    ("api:run-detail", "get"): (
        None,
        _expect(agent=200, other_agent=404, outsider=403, oncall=200, reviewer=200, admin=200),
    ),
    ("api:step-create", "post"): ({"tokens_in": 1}, AGENT_ONLY_OBJECT),
    ("api:step-gate", "post"): ({"estimate_tokens": 1}, AGENT_ONLY_OBJECT),
    ("api:step-usage", "post"): ({"tokens_in": 1}, AGENT_ONLY_OBJECT),
    ("api:tool-call-create", "post"): ({"tool": "kb.read", "args": {}}, AGENT_ONLY_OBJECT),
    ("api:run-finish", "post"): ({"status": "succeeded"}, AGENT_ONLY_OBJECT),
    ("api:run-cancel", "post"): (
        {"reason": "matrix"},
        _expect(**PEOPLE_ONLY, oncall=200, reviewer=200, admin=200),
    ),
    ("api:tool-call-detail", "get"): (None, AGENT_ONLY_OBJECT),
    ("api:tool-call-result", "post"): ({"ok": True, "output": {}}, AGENT_ONLY_OBJECT),
    ("api:approval-list", "get"): (
        None,
        _expect(**PEOPLE_ONLY, oncall=200, reviewer=200, admin=200),
    ),
    ("api:approval-decide", "post"): (
        {"verdict": "approve"},
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=200, admin=200),
    ),
    ("api:kill-switch", "get"): (None, _expect(**PEOPLE_ONLY, oncall=200, reviewer=200, admin=200)),
    ("api:kill-switch", "put"): (
        {"mode": "off"},
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=200),
    ),
    ("api:schema", "get"): (None, dict.fromkeys(PERSONAS, 200)),
    # The automation API: the console's roles, with people's tokens.
    ("api:run-create", "get"): (None, _expect(**PEOPLE_ONLY, oncall=200, reviewer=200, admin=200)),
    ("api:agent-list", "get"): (None, _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=200)),
    ("api:agent-list", "post"): (
        {"name": "matrix-bot"},
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=201),
    ),
    ("api:agent-detail", "get"): (
        None,
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=200),
    ),
    ("api:agent-key-issue", "post"): (
        {"label": "matrix"},
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=201),
    ),
    ("api:agent-key-revoke", "post"): (
        None,
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=200),
    ),
    ("api:agent-set-enabled", "put"): (
        {"enabled": True},
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=200),
    ),
    ("api:policy", "get"): (None, _expect(**PEOPLE_ONLY, oncall=200, reviewer=200, admin=200)),
    # base_version 1 is stale (the fixture published v2): past the role check, a 409.
    ("api:policy", "post"): (
        {"yaml": POLICY, "reason": "matrix", "base_version": 1},
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=409),
    ),
    ("api:policy-dry-run", "post"): (
        {"yaml": POLICY},
        _expect(**PEOPLE_ONLY, oncall=403, reviewer=403, admin=200),
    ),
}


def _methods(route: Route) -> set[str]:
    view_class = getattr(route.callback, "view_class", None) or getattr(route.callback, "cls", None)
    if view_class is None:  # the async long-poll function view
        return {"get"}
    return {m for m in ("get", "post", "put", "patch", "delete") if hasattr(view_class, m)}


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.OPSCONSOLE_RATE_LIMITS = {"runs": None, "tool_calls": None}


@dataclass
class World:
    """One run of the agent with an allowed tool call and a pending approval request."""

    run_id: int
    tool_call_id: int
    request_id: int


@pytest.fixture
def callers(agent, outsider_agent, outsider, oncall, reviewer, admin, publish_policy):
    publish_policy(POLICY)
    _, revoked_key = registry_services.agent_key_issue(agent=agent.agent, actor="system")
    registry_services.agent_key_revoke(key_id=AgentKey.objects.latest("pk").pk, actor="system")
    from opsconsole.models import UserToken
    from opsconsole.services import user_token_issue

    _, revoked_token = user_token_issue(user=oncall.user, actor="system")
    UserToken.objects.filter(pk=UserToken.objects.latest("pk").pk).update(
        revoked_at="2020-01-01T00:00:00Z"
    )
    clients = {
        "anonymous": JsonClient(),
        "agent": agent.api,
        "other_agent": outsider_agent.api,
        "revoked_agent_key": JsonClient(revoked_key),
        "outsider": outsider.api,
        "revoked_user_token": JsonClient(revoked_token),
        "oncall": oncall.api,
        "reviewer": reviewer.api,
        "admin": admin.api,
    }

    def new_world() -> World:
        run, _ = gateway_services.run_start(agent=agent.agent, task="matrix")
        call = gateway_services.tool_call_decide(
            agent=agent.agent, run_id=run.pk, tool="kb.read", args={}
        )
        write = gateway_services.tool_call_decide(
            agent=agent.agent, run_id=run.pk, tool="email.send", args={"to": "x"}
        )
        return World(run.pk, call.pk, write.approval.pk)

    return clients, new_world


def _api_path(name: str, world: World) -> str:
    kwargs = {"run_id": world.run_id, "tool_call_id": world.tool_call_id}
    kwargs["request_id"] = world.request_id
    route = next(r for r in API_ROUTES if r.name == name)
    if "<slug:name>" in route.pattern:
        kwargs["name"] = Run.objects.get(pk=world.run_id).agent.name
    if "<int:key_id>" in route.pattern:  # a spare key: revoking the agent's own would lock it out
        agent = Run.objects.get(pk=world.run_id).agent
        kwargs["key_id"] = registry_services.agent_key_issue(agent=agent, actor="system")[0].pk
    if "<int:ticket>" in route.pattern:  # a gated step of the run, its usage not yet reported
        agent = Run.objects.get(pk=world.run_id).agent
        kwargs["ticket"] = gateway_services.step_gate(agent=agent, run_id=world.run_id).ticket
    wanted = {k: v for k, v in kwargs.items() if f":{k}>" in route.pattern}
    return reverse(name, kwargs=wanted)


def test_every_api_route_has_expectations():
    discovered = {(r.name, m) for r in API_ROUTES for m in _methods(r)}
    assert discovered == set(API_EXPECTATIONS)


@pytest.mark.parametrize("route_and_method", sorted(API_EXPECTATIONS), ids="{0[0]} {0[1]}".format)
def test_api_matrix(route_and_method, callers):
    name, method = route_and_method
    clients, new_world = callers
    body, expected = API_EXPECTATIONS[(name, method)]
    assert set(expected) == set(PERSONAS)
    seen = {}
    for persona in PERSONAS:
        world = new_world()  # fresh objects: one caller's success never changes another's case
        client = clients[persona]
        path = _api_path(name, world)
        if method == "get":
            response = client.get(path)
        elif method == "post":
            response = client.post_json(path, body)
        else:
            response = client.put_json(path, body)
        seen[persona] = response.status_code
        if response.status_code >= 400:
            error = response.json()
            assert set(error) >= {"error", "detail"}, (persona, error)
    assert seen == expected


def test_a_refused_call_changes_nothing(callers):
    """The 403s and 404s above are refusals, not partial actions."""
    clients, new_world = callers
    world = new_world()
    clients["other_agent"].post_json(f"/api/v1/runs/{world.run_id}/finish", {"status": "failed"})
    clients["other_agent"].post_json(
        f"/api/v1/runs/{world.run_id}/tool-calls", {"tool": "kb.read", "args": {"x": 1}}
    )
    clients["oncall"].post_json(
        f"/api/v1/approvals/{world.request_id}/decision", {"verdict": "approve"}
    )
    clients["reviewer"].put_json("/api/v1/kill-switch", {"mode": "stop_all", "reason": "x"})
    clients["agent"].post_json(f"/api/v1/runs/{world.run_id}/cancel", {})

    run = Run.objects.get(pk=world.run_id)
    assert (run.status, run.tool_calls) == ("waiting_approval", 2)
    assert ApprovalRequest.objects.get(pk=world.request_id).status == "pending"
    assert KillSwitch.objects.get(pk=1).mode == "off"


def test_ids_that_do_not_exist_are_404_for_everyone_allowed(callers):
    clients, _ = callers
    assert clients["agent"].get("/api/v1/runs/999999999").status_code == 404
    assert clients["agent"].get("/api/v1/tool-calls/999999999").status_code == 404
    assert clients["oncall"].get("/api/v1/runs/999999999").status_code == 404
    response = clients["reviewer"].post_json(
        "/api/v1/approvals/999999999/decision", {"verdict": "approve"}
    )
    assert response.status_code == 404


def test_a_console_session_cannot_drive_the_api(admin):
    """The API takes bearer keys only, so a logged-in browser cannot be tricked into a call
    (no CSRF on the API)."""
    browser = JsonClient()
    browser.force_login(admin.user)
    response = browser.put_json("/api/v1/kill-switch", {"mode": "stop_all", "reason": "csrf"})
    assert response.status_code == 401
    assert KillSwitch.objects.get(pk=1).mode == "off"


# --- web pages ----------------------------------------------------------------------------


RANK = {None: 0, roles.ONCALL: 1, roles.REVIEWER: 2, roles.ADMIN: 3}


def _web_url(route: Route, world: World, agent_name: str, key_id: int) -> str:
    values = {
        "run_id": world.run_id,
        "request_id": world.request_id,
        "key_id": key_id,
        "name": agent_name,
        "agent": agent_name,
        "number": 1,
        "rule_id": 1,
    }
    kwargs = {}
    for part in route.pattern.split("<")[1:]:
        spec = part.split(">")[0]
        key = spec.split(":")[-1]
        kwargs[key] = values.get(key, "kb.read")
    return reverse(route.name, kwargs=kwargs)


def test_every_web_page_checks_a_role_or_is_public():
    unchecked = {r.name for r in WEB_ROUTES if getattr(r.callback, "required_role", None) is None}
    assert unchecked <= set(PUBLIC_PAGES), unchecked - set(PUBLIC_PAGES)


@pytest.mark.parametrize(
    "route",
    [r for r in WEB_ROUTES if getattr(r.callback, "required_role", None)],
    ids=lambda r: r.name,
)
def test_web_matrix(route, callers, agent, outsider, oncall, reviewer, admin):
    _, new_world = callers
    world = new_world()
    url = _web_url(
        route, world, agent.agent.name, AgentKey.objects.filter(agent=agent.agent).first().pk
    )
    required = route.callback.required_role

    anonymous = Client()
    for method in ("get", "post"):
        response = getattr(anonymous, method)(url)
        assert response.status_code == 302, (method, response.status_code)
        assert response["Location"].startswith(reverse("login") + "?next="), response["Location"]

    people = {None: outsider, roles.ONCALL: oncall, roles.REVIEWER: reviewer, roles.ADMIN: admin}
    for role, person in people.items():
        browser = Client()
        browser.force_login(person.user)
        response = browser.get(url)
        if RANK[role] < RANK[required]:
            assert response.status_code == 403, (role, response.status_code)
            assert browser.post(url).status_code == 403, role
        else:
            assert response.status_code not in (302, 401, 403), (role, response.status_code)


def test_the_kill_switch_page_is_open_to_on_call_but_only_admins_change_it(oncall):
    browser = Client()
    browser.force_login(oncall.user)
    response = browser.post(
        reverse("kill_switch"), {"mode": "stop_all", "reason": "x", "confirmed": "on"}
    )
    assert response.status_code == 403
    assert KillSwitch.objects.get(pk=1).mode == "off"


@pytest.mark.parametrize("route", ADMIN_SITE_ROUTES[:1], ids=lambda r: r.name)
def test_the_django_admin_site_is_closed_to_console_roles(route, oncall, admin):
    for user in (None, oncall.user, admin.user):
        browser = Client()
        if user is not None:
            browser.force_login(user)
        response = browser.get(reverse(route.name))
        assert response.status_code == 302
        assert "/django-admin/login/" in response["Location"]


# --- headers, CSP, deploy checks ----------------------------------------------------------


def test_security_headers_are_set(client, db):
    response = client.get(reverse("login"))
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    session_cookie = django_settings.SESSION_COOKIE_HTTPONLY
    assert session_cookie is True


def test_every_response_carries_a_strict_content_security_policy(client, db):
    for url in (reverse("login"), "/api/v1/schema/", reverse("healthz")):
        policy = client.get(url)["Content-Security-Policy"]
        assert policy == (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'self'; "
            "form-action 'self'"
        )
        assert "unsafe-inline" not in policy


def test_check_deploy_is_clean_on_production_settings(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "DJANGO_SECURE": "true",
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": "console.example.com",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "OPSCONSOLE_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/runs/99999999999999999999",  # past any integer column
        "/api/v1/tool-calls/99999999999999999999",  # the async long-poll view
        "/api/v1/runs/-1",  # matches no route
        "/api/v1/no-such-endpoint",
    ],
)
def test_ids_out_of_range_and_unknown_api_urls_are_a_json_404(agent, path):
    response = agent.api.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
