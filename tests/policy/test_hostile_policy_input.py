"""A policy is written by people and read on every decision: nothing in it may make the server
fetch a URL or a file, backtrack for seconds, expand without bound or crash a page."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from django.test import Client
from django.urls import reverse

from agents.models import PolicyVersion, Run
from agents.policy.document import (
    SEED_POLICY_YAML,
    dump_yaml,
    normalise,
    parse_yaml,
)
from agents.policy.selectors import policy_current

pytestmark = pytest.mark.django_db


def logged_in(person) -> Client:
    client = Client()
    client.force_login(person.user)
    return client


@pytest.fixture
def fetch_target():
    """A local HTTP server that records every request it gets (it must get none)."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            requests.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/schema.json", requests
    server.shutdown()


def policy_with_args_schema(schema: dict) -> dict:
    document = parse_yaml(SEED_POLICY_YAML)
    document["tools"]["definitions"] = {"search.read": {"args_schema": schema}}
    return document


# --- $ref is resolved only inside the schema ------------------------------------------------------


def test_a_dry_run_draft_with_a_remote_ref_is_refused_and_nothing_is_fetched(
    oncall, agent, start_run, fetch_target
):
    url, requests = fetch_target
    run = start_run()
    agent.api.post_json(f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "search.read"})
    draft = policy_with_args_schema({"properties": {"q": {"$ref": url}}})

    response = logged_in(oncall).post(
        reverse("monitoring:dry_run"), {"document": dump_yaml(draft), "limit": "100"}
    )

    assert response.status_code == 422
    assert "points outside the schema" in response.content.decode()
    assert requests == []


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "https://example.com/s.json", "other.json"])
def test_saving_a_policy_with_a_ref_outside_the_schema_is_a_form_error(admin, ref):
    draft = policy_with_args_schema({"$ref": ref})

    response = logged_in(admin).post(
        reverse("policy:edit"), {"yaml": dump_yaml(draft), "reason": "try"}
    )

    assert response.status_code == 422
    assert "points outside the schema" in response.content.decode()
    assert PolicyVersion.objects.count() == 1


def test_a_ref_inside_the_schema_still_works(agent, start_run, publish_policy):
    publish_policy(
        policy_with_args_schema(
            {
                "$defs": {"query": {"type": "string", "maxLength": 5}},
                "properties": {"q": {"$ref": "#/$defs/query"}},
            }
        )
    )
    run = start_run()
    calls = f"/api/v1/runs/{run['id']}/tool-calls"

    assert agent.api.post_json(calls, {"tool": "search.read", "args": {"q": "ok"}}).json()[
        "decision"
    ] == ("allow")
    refused = agent.api.post_json(calls, {"tool": "search.read", "args": {"q": "too long"}})
    assert refused.json()["stop_reason"] == "invalid_tool_args:search.read"


def test_a_remote_ref_already_in_the_live_policy_fails_closed_without_fetching(
    agent, start_run, fetch_target
):
    url, requests = fetch_target
    # As a policy saved before references were checked: stored as is, not through normalise.
    document = normalise(parse_yaml(SEED_POLICY_YAML))
    document["tools"]["definitions"]["search.read"] = {
        **normalise(policy_with_args_schema({}))["tools"]["definitions"]["search.read"],
        "args_schema": {"properties": {"q": {"$ref": url}}},
    }
    PolicyVersion.objects.create(number=2, document=document, author="system", reason="old")
    run = start_run()

    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "search.read", "args": {"q": "x"}}
    )

    assert response.status_code == 200, response.content
    assert response.json()["decision"] == "stop"
    assert response.json()["stop_reason"] == "invalid_tool_args:search.read"
    assert Run.objects.get(pk=run["id"]).status == "stopped"
    assert requests == []


# --- patterns cannot backtrack --------------------------------------------------------------------


def test_a_catastrophic_pattern_answers_at_once_and_holds_no_one_up(
    transactional_db,  # the call runs on another thread, with its own connection
    agent,
    start_run,
    publish_policy,
):
    publish_policy(
        policy_with_args_schema(
            {"properties": {"q": {"type": "string", "pattern": "^([a-zA-Z0-9]+\\s?)*$"}}}
        )
    )
    run = start_run()
    answers: list = []

    def call():
        answers.append(
            agent.api.post_json(
                f"/api/v1/runs/{run['id']}/tool-calls",
                # With a backtracking engine this takes 2^40 steps: hours, holding the run's lock.
                {"tool": "search.read", "args": {"q": "a" * 40 + "!"}},
            )
        )

    worker = threading.Thread(target=call, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=20)

    assert not worker.is_alive(), f"still matching after {time.monotonic() - started:.0f} s"
    assert answers[0].status_code == 200, answers[0].content
    assert answers[0].json()["stop_reason"] == "invalid_tool_args:search.read"


def test_a_pattern_the_linear_engine_cannot_run_is_refused_when_saved(admin):
    draft = policy_with_args_schema({"properties": {"q": {"type": "string", "pattern": "(a)\\1"}}})

    response = logged_in(admin).post(
        reverse("policy:edit"), {"yaml": dump_yaml(draft), "reason": "try"}
    )

    assert response.status_code == 422
    assert "cannot be used" in response.content.decode()
    assert PolicyVersion.objects.count() == 1


# --- YAML cannot expand without bound ---------------------------------------------------------------


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]",
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]",
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]",
        "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]",
        "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]",
    ]
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BILLION_LAUGHS, "expands to more than"),
        ("tools: &t {allow: [*t]}", "refers to the value that contains it"),
        ("[" * 50_000, "nested deeper than"),
    ],
    ids=["alias-bomb", "self-reference", "deep-nesting"],
)
def test_a_yaml_bomb_is_a_form_error_in_the_editor_and_the_dry_run(admin, text, message):
    client = logged_in(admin)

    edited = client.post(reverse("policy:edit"), {"yaml": text, "reason": "try"})
    dry_run = client.post(reverse("monitoring:dry_run"), {"document": text, "limit": "10"})

    for response in (edited, dry_run):
        assert response.status_code == 422
        assert message in response.content.decode()
    assert PolicyVersion.objects.count() == 1


def test_a_yaml_anchor_that_expands_a_little_is_still_fine():
    document = parse_yaml(
        "budgets: &b {max_steps: 5}\nagents: {a-bot: {budgets: *b}, b-bot: {budgets: *b}}"
    )
    assert normalise(document)["agents"]["b-bot"]["budgets"]["max_steps"] == 5


# --- the tool form -----------------------------------------------------------------------------------


def tool_form(name: str, **fields) -> dict:
    return {
        "name": name,
        "allowed": "on",
        "effect": "read",
        "cost_usd": "0",
        "max_output_bytes": "1000",
        "reviewers": "1",
        "timeout_seconds": "60",
        "reason": "try",
        **fields,
    }


def test_a_schema_of_fifty_thousand_brackets_is_a_form_error(admin):
    response = logged_in(admin).post(
        reverse("policy:tool_new"), tool_form("kb.read", args_schema="[" * 50_000)
    )

    assert response.status_code == 422
    assert "Nested deeper than" in response.content.decode()
    assert PolicyVersion.objects.count() == 1


def test_a_tool_name_longer_than_the_mcp_limit_is_a_form_error(admin):
    too_long = "t" * 129  # the MCP convention allows 1-128 characters

    response = logged_in(admin).post(reverse("policy:tool_new"), tool_form(too_long))

    assert response.status_code == 422
    assert too_long not in policy_current().document["tools"]["allow"]
