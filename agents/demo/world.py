"""The demo's world on the server side: its people, the demo policy and each demo agent's key.

``prepare`` needs Django (it migrates and writes through the services); the fleet that then
drives the console (agents/demo/fleet.py) needs only the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command

from agents.models import Agent, AgentKey
from agents.policy.document import SEED_POLICY_YAML, normalise, parse_yaml
from agents.policy.selectors import policy_current
from agents.policy.services import policy_publish
from agents.registry.services import agent_create, agent_key_issue, agent_key_revoke
from opsconsole.services import user_create

DEMO_LABEL = "demo"
DEMO_USERS = {"oncall": "oncall", "reviewer": "reviewer", "admin": "admin"}  # username -> role


# The seed's default config plus the tools the demo needs.
DEMO_TOOLS: dict[str, dict[str, Any]] = {
    "browser.open": {
        "description": "Open a web page (the incident's tool).",
        "effect": "read",
        "expensive": True,
        "cost_usd": 0.7,
    },
    "vendor.quote.get": {
        "description": "Ask a vendor's API for a price quote.",
        "effect": "read",
        "breaker": {"window": 10, "min_calls": 4, "failure_rate": 0.5, "cooldown_seconds": 20},
    },
    "email.send": {
        "description": "Send an email to a customer.",
        "effect": "write",
        "approval": {"required": True, "timeout_seconds": 120},
        "args_schema": {
            "type": "object",
            "required": ["to", "subject", "body"],
            "properties": {
                "to": {"type": "string", "minLength": 3},
                "subject": {"type": "string", "minLength": 1},
                "body": {"type": "string"},
            },
        },
    },
    "ticket.update": {
        "description": "Change a support ticket.",
        "effect": "write",
        "approval": {"required": True, "reviewers": 2},
    },
}


# Each demo agent may use only what its job needs (narrowing the global allowlist).
DEMO_AGENT_TOOLS: dict[str, list[str]] = {
    "support-bot": ["search.read", "kb.read", "http.get"],
    "browser-runaway": ["browser.open", "search.read"],
    "loop-bot": ["search.read", "kb.read"],
    "mail-bot": ["kb.read", "email.send", "ticket.update"],
    "quote-bot": ["vendor.quote.get"],
}


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: str
    password: str
    token: str


@dataclass(frozen=True)
class DemoWorld:
    users: list[DemoUser]
    agent_keys: dict[str, str]  # agent name -> raw key, kept in this process only
    policy_version: int
    policy_published: bool


def demo_policy_document(current_agents: dict[str, Any] | None = None) -> dict[str, Any]:
    """The seed's config plus the demo tools and agents; other agents' rules are kept."""

    document = parse_yaml(SEED_POLICY_YAML)
    document["tools"]["allow"] = sorted({*document["tools"]["allow"], *DEMO_TOOLS})
    document["tools"]["definitions"] = DEMO_TOOLS
    agents = {
        name: rule for name, rule in (current_agents or {}).items() if name not in DEMO_AGENT_TOOLS
    }
    agents.update({name: {"allow": tools} for name, tools in DEMO_AGENT_TOOLS.items()})
    document["agents"] = agents
    return document


def prepare() -> DemoWorld:
    """Migrate, then make sure the demo users, policy and agents exist. Idempotent."""

    call_command("migrate", interactive=False, verbosity=0)
    users = [_demo_user(username, role) for username, role in DEMO_USERS.items()]
    version, published = _demo_policy()
    keys = {name: _demo_agent_key(name) for name in DEMO_AGENT_TOOLS}
    return DemoWorld(
        users=users, agent_keys=keys, policy_version=version, policy_published=published
    )


def _demo_user(username: str, role: str) -> DemoUser:
    """A fresh password and API token at every start (earlier tokens are revoked)."""

    exists = get_user_model().objects.filter(username=username).exists()
    credentials = user_create(username=username, role=role, actor="system", reset=exists)
    return DemoUser(
        username=username, role=role, password=credentials.password, token=credentials.token
    )


def _demo_policy() -> tuple[int, bool]:

    current = policy_current()
    wanted = normalise(demo_policy_document(current.document.get("agents")))
    if current.document == wanted:
        return current.version, False
    version = policy_publish(document=wanted, author="system", reason="demo policy")
    return version.number, True


def _demo_agent_key(name: str) -> str:

    agent = Agent.objects.filter(name=name).first()
    if agent is None:
        # Its allowlist is part of the demo policy, so none is passed here.
        agent = agent_create(name=name, actor="system", description="demo fleet agent")
    for key_id in AgentKey.objects.filter(
        agent=agent, label=DEMO_LABEL, revoked_at__isnull=True
    ).values_list("pk", flat=True):
        agent_key_revoke(key_id=key_id, actor="system")
    _, raw = agent_key_issue(agent=agent, actor="system", label=DEMO_LABEL)
    return raw
