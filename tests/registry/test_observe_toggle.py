"""An admin switches an agent between enforce and observe on its page or in the policy YAML:
each switch is a new policy version, the agent's row follows it, and it is audited."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import Agent, PolicyVersion
from agents.registry.services import agent_create
from opsconsole.models import AuditEntry
from tests.conftest import logged_in

pytestmark = pytest.mark.django_db


def switch(client, mode: str, reason: str = "see what enforcing would do first"):
    return client.post(
        reverse("agents:set_mode", args=["support-bot"]), {"mode": mode, "reason": reason}
    )


def test_an_admin_puts_an_agent_in_observe_mode_and_back_audited(admin, agent):
    client = logged_in(admin)
    before = PolicyVersion.objects.count()
    response = switch(client, "observe")
    assert response.status_code == 302

    bot = Agent.objects.get(name="support-bot")
    assert bot.mode == "observe"
    latest = PolicyVersion.objects.order_by("-number").first()
    assert PolicyVersion.objects.count() == before + 1
    assert latest.document["agents"]["support-bot"]["mode"] == "observe"
    assert latest.author == "user:ada-admin"
    entry = AuditEntry.objects.filter(action="agent.mode").get()
    assert (entry.actor, entry.target_id, entry.reason) == (
        "user:ada-admin",
        "support-bot",
        "see what enforcing would do first",
    )
    assert (entry.before, entry.after["mode"]) == ({"mode": "enforce"}, "observe")

    page = client.get(reverse("agents:detail", args=["support-bot"]))
    assert b"observe mode" in page.content
    assert reverse("agents:migration_path", args=["support-bot"]).encode() in page.content

    assert switch(client, "enforce", reason="").status_code == 302
    assert Agent.objects.get(name="support-bot").mode == "enforce"
    assert AuditEntry.objects.filter(action="agent.mode").count() == 2


def test_switching_to_the_mode_it_has_publishes_nothing(admin, agent):
    client = logged_in(admin)
    switch(client, "observe")
    versions = PolicyVersion.objects.count()
    assert switch(client, "observe").status_code == 302  # a double click
    assert PolicyVersion.objects.count() == versions
    assert AuditEntry.objects.filter(action="agent.mode").count() == 1


def test_observe_mode_needs_a_reason_and_a_bad_mode_is_refused(admin, agent):
    client = logged_in(admin)
    versions = PolicyVersion.objects.count()
    missing = switch(client, "observe", reason="  ")
    assert missing.status_code == 422
    assert b"Say why the agent is observed" in missing.content
    assert switch(client, "lenient").status_code == 422
    assert PolicyVersion.objects.count() == versions
    assert Agent.objects.get(name="support-bot").mode == "enforce"
    assert not AuditEntry.objects.filter(action="agent.mode").exists()


@pytest.mark.parametrize("who", ["oncall", "reviewer", "outsider"])
def test_only_an_admin_switches_the_mode(request, agent, who):
    person = request.getfixturevalue(who)
    response = switch(logged_in(person), "observe")
    assert response.status_code == 403
    assert Agent.objects.get(name="support-bot").mode == "enforce"


def test_the_switch_takes_a_post(admin, agent):
    response = logged_in(admin).get(reverse("agents:set_mode", args=["support-bot"]))
    assert response.status_code == 405


def test_the_policy_yaml_sets_the_mode_and_a_restore_sets_it_back(agent, publish_policy):
    from agents.policy.services import policy_restore

    first = PolicyVersion.objects.order_by("-number").first()
    publish_policy(
        'tools: {allow: ["kb.read"]}\nagents:\n  support-bot: {mode: observe}\n', reason="try"
    )
    assert Agent.objects.get(name="support-bot").mode == "observe"
    policy_restore(number=first.number, author="user:ada", reason="back")
    assert Agent.objects.get(name="support-bot").mode == "enforce"
    assert [
        e.after["mode"] for e in AuditEntry.objects.filter(action="agent.mode").order_by("id")
    ] == [
        "observe",
        "enforce",
    ]


def test_a_mode_outside_the_vocabulary_is_a_policy_error(agent, publish_policy):
    from opsconsole.errors import Invalid

    with pytest.raises(Invalid):
        publish_policy("agents:\n  support-bot: {mode: lenient}\n")
    assert Agent.objects.get(name="support-bot").mode == "enforce"


def test_an_agent_the_policy_already_observes_is_created_in_observe_mode(db, publish_policy):
    publish_policy("agents:\n  new-bot: {mode: observe}\n")
    bot = agent_create(name="new-bot", actor="user:ada", tools=["kb.read"])
    assert bot.mode == "observe"
    assert Agent.objects.get(name="new-bot").mode == "observe"
