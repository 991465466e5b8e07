"""API fuzzing with schemathesis against the served OpenAPI schema (``/api/v1/schema/``).

The Django app runs in-process (WSGI); the agent API is called with an agent's key and the reviewer
and operator API with an admin's token. Every generated request must get an answer that is not a
5xx and that conforms to the schema (status code declared, body matching its schema, the error
shape for errors). The stateful test follows the schema's links (run -> steps, tool calls, finish;
tool call -> result, long-poll), so later calls hit real objects instead of random ids.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from opsconsole import limits

POLICY = """
tools:
  allow: ["kb.read", "search.read", "email.send"]
  definitions:
    email.send: {effect: write, approval: {required: true, reviewers: 1, timeout_seconds: 60}}
budgets: {max_tool_calls: 1000, max_steps: 1000, max_seconds: 3600}
loop: {max_repeats: 1000}
"""

EXAMPLES = 25


# Loaded once at collection: the schema view needs no database.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())
KEYS: dict[str, str] = {}


@pytest.fixture
def keys(db, settings, agent, admin, publish_policy) -> Iterator[dict[str, str]]:
    publish_policy(POLICY)
    # The fuzzer is one agent sending hundreds of calls; the limits have their own tests.
    settings.OPSCONSOLE_RATE_LIMITS = {"runs": None, "tool_calls": None}
    limits.cache_health.reset()
    KEYS.update(agent=agent.key, person=admin.token)
    # Like Django's test client: the WSGI handler would close the test's connection (and its
    # transaction) at the end of every request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield KEYS
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _auth(case) -> dict[str, str]:
    who = "agent" if "agent" in (case.operation.definition.raw.get("tags") or []) else "person"
    return {"Authorization": f"Bearer {KEYS[who]}"}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_5xx_or_an_answer_outside_the_schema(case, keys):
    # Every response check runs (no 5xx, status code, content type, body and headers conforming,
    # auth enforced, ...); the two request-strictness checks are left out: the API accepts some
    # requests its schema does not describe exactly (e.g. extra fields), which is no failure.
    case.call_and_validate(
        headers=_auth(case), excluded_checks=[positive_data_acceptance, negative_data_rejection]
    )


# Sequences per run, drawn from a fixed seed: the same sequences on every run, so the check below
# that the links were followed cannot pass or fail by the luck of the draw.
STATEFUL_EXAMPLES = 40
STATEFUL_SEED = 20261126


def test_sequences_following_the_schema_links_get_no_5xx_and_conform(keys):
    """Stateful: create a run, then record steps, decide tool calls, report results, poll,
    finish or cancel it (the schema's links), in any order Hypothesis picks."""

    answered: set[tuple[str, int]] = set()

    # The automation API (people managing agents, keys and policy) is fuzzed call by call
    # above; the sequences stay on the run's life, which is what the links describe.
    class Sequences(schema.exclude(tag="automation").as_state_machine()):
        def after_call(self, response, case):
            answered.add((case.operation.label, response.status_code))

        def get_call_kwargs(self, case):
            return {"headers": _auth(case)}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(
                response,
                headers=kwargs.get("headers"),
                excluded_checks=[positive_data_acceptance, negative_data_rejection],
                transport_kwargs=kwargs,
            )

    Sequences._hypothesis_internal_use_seed = STATEFUL_SEED  # what hypothesis.seed() sets
    Sequences.run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # The links were followed: calls on a run created earlier in the sequence succeeded.
    assert ("POST /api/v1/runs", 201) in answered
    linked = {
        "POST /api/v1/runs/{run_id}/steps",
        "POST /api/v1/runs/{run_id}/tool-calls",
        "GET /api/v1/runs/{run_id}",
        "POST /api/v1/runs/{run_id}/finish",
    }
    assert {(label, 200) for label in linked} & answered, sorted(answered)
