"""The agents pages: admins create agents, issue and revoke keys, and disable agents."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import Agent, AgentKey
from agents.policy.selectors import policy_current
from opsconsole.models import AuditEntry
from tests.conftest import JsonClient, logged_in


def test_an_admin_creates_an_agent_with_its_own_allowlist(admin):
    response = logged_in(admin).post(
        reverse("agents:list"), {"name": "billing-bot", "description": "bills", "tools": "kb.read"}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("agents:detail", args=["billing-bot"])
    assert Agent.objects.filter(name="billing-bot").exists()
    assert policy_current().document["agents"]["billing-bot"]["allow"] == ["kb.read"]


def test_creating_an_agent_twice_or_with_a_bad_name_is_a_form_error(admin, agent):
    client = logged_in(admin)
    taken = client.post(reverse("agents:list"), {"name": "support-bot"})
    assert taken.status_code == 422
    assert b"already exists" in taken.content
    bad = client.post(reverse("agents:list"), {"name": "not a slug!"})
    assert bad.status_code == 422
    assert Agent.objects.count() == 1


def test_a_key_is_shown_once_and_works_until_revoked(admin, agent):
    client = logged_in(admin)
    response = client.post(reverse("agents:key_issue", args=["support-bot"]), {"label": "prod"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    raw = response.context["raw_key"]
    assert raw in response.content.decode()
    page = client.get(reverse("agents:detail", args=["support-bot"])).content.decode()
    assert raw not in page  # never shown again
    key = AgentKey.objects.get(label="prod")
    assert key.prefix in page

    api = JsonClient(raw)
    assert api.post_json("/api/v1/runs", {"task": "t"}).status_code == 201
    revoked = client.post(reverse("agents:key_revoke", args=[key.pk]))
    assert revoked.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert api.post_json("/api/v1/runs", {"task": "t"}).status_code == 401
    assert AuditEntry.objects.filter(action="agent_key.revoke").count() == 1


def test_an_admin_disables_an_agent_and_its_runs_stop(admin, agent, start_run):
    run = start_run()
    client = logged_in(admin)
    no_reason = client.post(reverse("agents:set_enabled", args=["support-bot"]), {"enabled": "0"})
    assert no_reason.status_code == 422
    assert Agent.objects.get(name="support-bot").enabled
    response = client.post(
        reverse("agents:set_enabled", args=["support-bot"]), {"enabled": "0", "reason": "leaking"}
    )
    assert response.status_code == 302
    assert not Agent.objects.get(name="support-bot").enabled
    answer = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    ).json()
    assert answer["stop_reason"] == "agent_disabled"
    client.post(reverse("agents:set_enabled", args=["support-bot"]), {"enabled": "1"})
    assert Agent.objects.get(name="support-bot").enabled


@pytest.mark.parametrize("persona", ["oncall", "reviewer", "outsider"])
def test_only_admins_manage_agents_and_keys(request, persona, agent):
    client = logged_in(request.getfixturevalue(persona))
    key = AgentKey.objects.get()
    assert client.post(reverse("agents:list"), {"name": "x-bot"}).status_code == 403
    assert client.post(reverse("agents:key_issue", args=["support-bot"])).status_code == 403
    assert client.post(reverse("agents:key_revoke", args=[key.pk])).status_code == 403
    assert (
        client.post(
            reverse("agents:set_enabled", args=["support-bot"]), {"enabled": "0", "reason": "x"}
        ).status_code
        == 403
    )
    # every console role may look at the agent's page (without its key controls), an outsider not
    page = client.get(reverse("agents:detail", args=["support-bot"]))
    assert page.status_code == (403 if persona == "outsider" else 200)
    assert reverse("agents:key_issue", args=["support-bot"]) not in page.content.decode()
    assert not Agent.objects.filter(name="x-bot").exists()
    assert AgentKey.objects.get().revoked_at is None
    assert Agent.objects.get(name="support-bot").enabled


def test_agent_actions_need_a_post(admin, agent):
    client = logged_in(admin)
    assert client.get(reverse("agents:key_issue", args=["support-bot"])).status_code == 405
    assert client.get(reverse("agents:set_enabled", args=["support-bot"])).status_code == 405
    key = AgentKey.objects.get()
    assert client.get(reverse("agents:key_revoke", args=[key.pk])).status_code == 405


def test_the_agents_page_shows_last_use(admin, agent, start_run):
    start_run()
    page = logged_in(admin).get(reverse("agents:list")).content.decode()
    assert "support-bot" in page
    assert "never" not in page.split('id="agent-support-bot"')[1].split("</tr>")[0]


def test_the_agents_table_refreshes_itself_live(admin, agent):
    client = logged_in(admin)

    page = client.get(reverse("agents:list")).content.decode()
    assert 'data-live-topics="killswitch,agents"' in page
    assert 'data-live-refresh="agents.changed"' in page
    fragment = client.get(reverse("agents:list"), headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<table id="agents-table"')
    assert agent.agent.name in fragment
    assert "Create an agent" not in fragment
