"""The fixture world: an agent and an outsider agent with keys, and a person per role."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from agents.models import Agent
from agents.policy import services as policy_services
from agents.registry import services as registry_services
from opsconsole import roles
from opsconsole.services import user_token_issue
from tests.servers import PrivateRedis


class JsonClient(Client):
    """A Django test client that speaks JSON with a bearer key."""

    def __init__(self, key: str | None = None, **defaults):
        if key:
            defaults["HTTP_AUTHORIZATION"] = f"Bearer {key}"
        super().__init__(**defaults)

    def post_json(self, path: str, data=None, **extra):
        return self.post(
            path,
            json.dumps(data if data is not None else {}),
            content_type="application/json",
            **extra,
        )

    def put_json(self, path: str, data=None, **extra):
        return self.put(
            path,
            json.dumps(data if data is not None else {}),
            content_type="application/json",
            **extra,
        )


@dataclass
class Person:
    user: User
    password: str
    token: str
    api: JsonClient


@dataclass
class AgentPersona:
    agent: Agent
    key: str
    api: JsonClient


def make_person(username: str, role: str | None) -> Person:
    password = f"pw-{username}-Secret-1"
    user = User.objects.create_user(username=username, password=password)
    if role:
        user.groups.add(Group.objects.get(name=role))
    _, token = user_token_issue(user=user, actor="system")
    return Person(user=user, password=password, token=token, api=JsonClient(token))


def logged_in(person: Person) -> Client:
    """A web console client with the person's session."""
    client = Client()
    client.force_login(person.user)
    return client


def make_agent(name: str, tools: list[str] | None = None) -> AgentPersona:
    agent = registry_services.agent_create(name=name, actor="system", tools=tools)
    _, key = registry_services.agent_key_issue(agent=agent, actor="system")
    return AgentPersona(agent=agent, key=key, api=JsonClient(key))


@pytest.fixture(autouse=True, scope="session")
def _eager_tasks():
    """Tasks run in-process in tests; the real-worker tests start their own Celery worker."""
    from opsconsole.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True


def restore_baseline() -> None:
    """What the data migrations create (roles, kill switch row, seed policy v1), which a
    transactional test's flush removes."""
    from agents.models import KillSwitch, PolicyVersion
    from agents.policy.document import SEED_POLICY_YAML, normalise, parse_yaml

    roles.ensure_groups()
    KillSwitch.objects.get_or_create(pk=1)
    if not PolicyVersion.objects.exists():
        PolicyVersion.objects.create(
            number=1,
            document=normalise(parse_yaml(SEED_POLICY_YAML)),
            author="system",
            reason="seed",
        )


@pytest.fixture(autouse=True)
def _baseline(request):
    """The baseline, put back for every test that uses the database."""
    if not any(
        name in request.fixturenames for name in ("db", "transactional_db")
    ) and not request.node.get_closest_marker("django_db"):
        return
    request.getfixturevalue("db")
    restore_baseline()


@pytest.fixture
def agent(db) -> AgentPersona:
    return make_agent("support-bot")


@pytest.fixture
def outsider_agent(db) -> AgentPersona:
    return make_agent("other-bot")


@pytest.fixture
def oncall(db) -> Person:
    return make_person("olivia-oncall", roles.ONCALL)


@pytest.fixture
def reviewer(db) -> Person:
    return make_person("rita-reviewer", roles.REVIEWER)


@pytest.fixture
def second_reviewer(db) -> Person:
    return make_person("ravi-reviewer", roles.REVIEWER)


@pytest.fixture
def admin(db) -> Person:
    return make_person("ada-admin", roles.ADMIN)


@pytest.fixture
def outsider(db) -> Person:
    """Logged in, but in no role group."""
    return make_person("oscar-outsider", None)


@pytest.fixture
def anonymous() -> JsonClient:
    return JsonClient()


@pytest.fixture
def publish_policy(db):
    """Publish a policy document (YAML text or dict) as the new current version."""
    from agents.policy.document import parse_yaml

    def publish(document, reason: str = "test"):
        if isinstance(document, str):
            document = parse_yaml(document)
        return policy_services.policy_publish(document=document, author="system", reason=reason)

    return publish


@pytest.fixture
def start_run(agent):
    def start(persona: AgentPersona | None = None, **body):
        persona = persona or agent
        body.setdefault("task", "answer a customer question")
        response = persona.api.post_json("/api/v1/runs", body)
        assert response.status_code == 201, response.content
        return response.json()

    return start


@pytest.fixture
def rate_clock(monkeypatch) -> list[float]:
    """The rate limits' clock stopped at a random moment: a test's calls all count in one fixed
    window (a real clock can cross a window's edge mid-test), and counters other tests left in a
    shared cache (Redis in CI) are never in it."""
    from opsconsole import limits

    now = [random.uniform(4e9, 5e9)]
    monkeypatch.setattr(limits, "_clock", lambda: now[0])
    return now


@pytest.fixture
def own_redis() -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """A private redis-server (port, start, stop) that a test may stop and start again."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(binary)
    server.start()
    try:
        yield server.port, server.start, server.stop
    finally:
        server.close()
