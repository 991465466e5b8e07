"""Agents and keys through the automation API (admins): the agents pages' services, audited."""

from __future__ import annotations

import pytest

from agents.models import Agent, AgentKey
from agents.policy.selectors import policy_current
from opsconsole.models import AuditEntry
from tests.conftest import JsonClient

MUTATIONS = [
    ("post", "/api/v1/agents", {"name": "new-bot"}),
    ("post", "/api/v1/agents/support-bot/keys", {"label": "ci"}),
    ("put", "/api/v1/agents/support-bot/enabled", {"enabled": False, "reason": "x"}),
]


def call(client, method: str, path: str, body=None):
    if method == "get":
        return client.get(path)
    if method == "put":
        return client.put_json(path, body)
    return client.post_json(path, body)


@pytest.mark.parametrize("persona", ["outsider", "oncall", "reviewer"])
def test_only_admins_manage_agents(persona, request, agent):
    person = request.getfixturevalue(persona)
    key = AgentKey.objects.get(agent=agent.agent)
    keys_before, audit_before = AgentKey.objects.count(), AuditEntry.objects.count()
    for method, path, body in [
        ("get", "/api/v1/agents", None),
        ("get", "/api/v1/agents/support-bot", None),
        *MUTATIONS,
        ("post", f"/api/v1/agent-keys/{key.pk}/revoke", {}),
    ]:
        response = call(person.api, method, path, body)
        assert response.status_code == 403, (method, path)
        assert response.json()["error"] == "forbidden"
    assert (AgentKey.objects.count(), AuditEntry.objects.count()) == (keys_before, audit_before)
    assert not Agent.objects.filter(name="new-bot").exists()
    assert Agent.objects.get(name="support-bot").enabled
    key.refresh_from_db()
    assert key.revoked_at is None


def test_an_agent_key_cannot_manage_agents(agent):
    assert agent.api.get("/api/v1/agents").status_code == 403
    assert agent.api.post_json("/api/v1/agents", {"name": "x"}).status_code == 403


def test_the_list_shows_agents_their_keys_and_spend(admin, agent, outsider_agent):
    response = admin.api.get("/api/v1/agents")
    assert response.status_code == 200
    rows = {row["name"]: row for row in response.json()["results"]}
    assert set(rows) == {"support-bot", "other-bot"}
    support = rows["support-bot"]
    assert support["enabled"] is True
    assert support["spend"] == {"last_hour": 0.0, "last_day": 0.0}
    [key] = support["keys"]
    assert key["prefix"] == AgentKey.objects.get(agent=agent.agent).prefix
    assert "key" not in key and "key_hash" not in key


def test_create_an_agent_with_its_own_allowlist(admin, db):
    version = policy_current().version
    response = admin.api.post_json(
        "/api/v1/agents", {"name": "billing-bot", "description": "bills", "tools": ["kb.read"]}
    )
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "billing-bot" and response.json()["keys"] == []
    assert Agent.objects.get(name="billing-bot").description == "bills"
    policy = policy_current()
    assert policy.version == version + 1
    assert policy.document["agents"]["billing-bot"]["allow"] == ["kb.read"]
    entry = AuditEntry.objects.get(action="agent.create")
    assert (entry.actor, entry.target_id) == ("user:ada-admin", "billing-bot")


def test_the_longest_agent_name_is_created_and_audited_in_full(admin, db):
    # 100 characters, the longest a name may be: its audit row keeps it whole (it overflowed the
    # audit's target column on PostgreSQL, a 503 for a valid request).
    name = "a" * 100
    response = admin.api.post_json("/api/v1/agents", {"name": name})
    assert response.status_code == 201, response.content
    assert AuditEntry.objects.get(action="agent.create").target_id == name
    assert admin.api.post_json("/api/v1/agents", {"name": name + "b"}).status_code == 400


def test_create_refuses_a_taken_name_and_a_bad_one(admin, agent):
    taken = admin.api.post_json("/api/v1/agents", {"name": "support-bot"})
    assert taken.status_code == 409
    assert taken.json()["error"] == "agent_exists"
    bad = admin.api.post_json("/api/v1/agents", {"name": "no spaces allowed"})
    assert bad.status_code == 400
    assert "name" in bad.json()["detail"]
    assert Agent.objects.count() == 1


def test_a_key_is_shown_once_and_works(admin, agent):
    response = admin.api.post_json("/api/v1/agents/support-bot/keys", {"label": "ci"})
    assert response.status_code == 201, response.content
    assert response["Cache-Control"] == "no-store"
    issued = response.json()
    assert issued["key"].startswith("aok_") and issued["label"] == "ci"
    row = AgentKey.objects.get(pk=issued["id"])
    assert issued["key"] not in (row.key_hash, row.prefix)
    # the raw key is never shown again
    listed = admin.api.get("/api/v1/agents/support-bot").json()
    assert issued["key"] not in str(listed)
    assert [k["id"] for k in listed["keys"]][0] == issued["id"]
    # and it works as the agent's key
    assert JsonClient(issued["key"]).post_json("/api/v1/runs", {"task": "t"}).status_code == 201
    entry = AuditEntry.objects.get(action="agent_key.issue", after__key=row.prefix)
    assert entry.actor == "user:ada-admin"


def test_a_revoked_key_stops_working_and_a_second_revoke_changes_nothing(admin, agent):
    key = AgentKey.objects.get(agent=agent.agent)
    response = admin.api.post_json(f"/api/v1/agent-keys/{key.pk}/revoke", {})
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert agent.api.post_json("/api/v1/runs", {"task": "t"}).status_code == 401
    again = admin.api.post_json(f"/api/v1/agent-keys/{key.pk}/revoke", {})
    assert again.status_code == 200
    assert AuditEntry.objects.filter(action="agent_key.revoke").count() == 1
    assert admin.api.post_json("/api/v1/agent-keys/999999/revoke", {}).status_code == 404


def test_disable_needs_a_reason_then_enable(admin, agent):
    no_reason = admin.api.put_json("/api/v1/agents/support-bot/enabled", {"enabled": False})
    assert no_reason.status_code == 400
    assert "reason" in no_reason.json()["detail"]
    assert Agent.objects.get(name="support-bot").enabled

    disabled = admin.api.put_json(
        "/api/v1/agents/support-bot/enabled", {"enabled": False, "reason": "leaking data"}
    )
    assert disabled.status_code == 200
    assert (disabled.json()["enabled"], disabled.json()["disabled_reason"]) == (
        False,
        "leaking data",
    )
    refused = agent.api.post_json("/api/v1/runs", {"task": "t"})
    assert (refused.status_code, refused.json()["stop_reason"]) == (409, "agent_disabled")
    entry = AuditEntry.objects.get(action="agent.disable")
    assert (entry.actor, entry.reason) == ("user:ada-admin", "leaking data")

    enabled = admin.api.put_json("/api/v1/agents/support-bot/enabled", {"enabled": True})
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True
    assert AuditEntry.objects.filter(action="agent.enable").count() == 1


def test_an_unknown_agent_is_a_404(admin, db):
    assert admin.api.get("/api/v1/agents/ghost").status_code == 404
    response = admin.api.post_json("/api/v1/agents/ghost/keys", {})
    assert (response.status_code, response.json()["error"]) == (404, "not_found")
    assert admin.api.put_json("/api/v1/agents/ghost/enabled", {"enabled": True}).status_code == 404
