"""The policy editor's dry run: what a draft would have done to recent runs, before saving."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import PolicyVersion

pytestmark = pytest.mark.django_db


def test_a_dry_run_shows_which_recent_runs_a_draft_would_stop_and_saves_nothing(
    client, admin, agent, start_run
):
    run = start_run()
    agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": 1}}
    )
    agent.api.post_json(f"/api/v1/runs/{run['id']}/finish", {"status": "succeeded"})
    versions = PolicyVersion.objects.count()
    client.force_login(admin.user)

    response = client.post(
        reverse("policy:edit"), {"yaml": 'tools:\n  allow: ["search.read"]\n', "preview": "1"}
    )

    assert response.status_code == 200
    body = response.content.decode()
    assert "would have stopped <strong>1</strong> of the last 1 runs" in body
    assert "tool_denied:kb.read" in body
    assert PolicyVersion.objects.count() == versions


def test_a_dry_run_of_an_invalid_draft_shows_the_errors(client, admin):
    client.force_login(admin.user)
    response = client.post(reverse("policy:edit"), {"yaml": "tools: [1", "preview": "1"})
    assert response.status_code == 422
    assert "not valid YAML" in response.content.decode()


# --- two admins editing at once -----------------------------------------------------------------


def _yaml_with_max_tool_calls(n: int) -> str:
    from agents.policy.document import dump_yaml
    from agents.policy.selectors import policy_current

    document = policy_current().document
    document = {**document, "budgets": {**document["budgets"], "max_tool_calls": n}}
    return dump_yaml(document)


def test_a_save_based_on_an_older_version_is_refused_and_shown_why(client, admin):
    from agents.policy.selectors import policy_current
    from agents.policy.services import policy_publish

    client.force_login(admin.user)
    page = client.get(reverse("policy:edit")).content.decode()
    started_from = policy_current().version
    assert f'name="based_on" value="{started_from}"' in page
    draft = _yaml_with_max_tool_calls(20)
    # Meanwhile another admin publishes.
    theirs = policy_publish(
        document={**policy_current().document, "loop": {"max_repeats": 7}},
        author="user:grace",
        reason="tighter loops",
    )

    response = client.post(
        reverse("policy:edit"), {"yaml": draft, "reason": "more calls", "based_on": started_from}
    )

    assert response.status_code == 422
    body = response.content.decode()
    assert f"Policy v{theirs.number} was published by user:grace (tighter loops)" in body
    assert PolicyVersion.objects.order_by("-number").first().number == theirs.number
    assert policy_current().document["loop"]["max_repeats"] == 7
    # The page now starts from the current version: saving again is a deliberate choice.
    assert f'name="based_on" value="{theirs.number}"' in body
    again = client.post(
        reverse("policy:edit"), {"yaml": draft, "reason": "more calls", "based_on": theirs.number}
    )
    assert again.status_code == 302
    assert policy_current().document["budgets"]["max_tool_calls"] == 20


@pytest.mark.parametrize(
    ("url", "data"),
    [
        (
            "policy:tool_new",
            {
                "name": "kb.write",
                "effect": "write",
                "cost_usd": "0",
                "max_output_bytes": "1000",
                "reviewers": "1",
                "timeout_seconds": "60",
            },
        ),
        ("policy:budgets", {"max_steps": "10", "max_seconds": "60", "max_tool_calls": "5"}),
    ],
)
def test_the_form_editors_refuse_a_stale_save_too(client, admin, url, data):
    from agents.policy.selectors import policy_current
    from agents.policy.services import policy_publish

    client.force_login(admin.user)
    started_from = policy_current().version
    policy_publish(document=policy_current().document, author="user:grace", reason="meanwhile")
    versions = PolicyVersion.objects.count()

    response = client.post(reverse(url), {**data, "reason": "mine", "based_on": started_from})

    assert response.status_code == 422
    assert "was published by user:grace" in response.content.decode()
    assert PolicyVersion.objects.count() == versions


def test_programmatic_amendments_reapply_on_top_of_a_version_published_in_between(db):
    from agents.policy.selectors import policy_current
    from agents.policy.services import policy_amend, policy_publish

    calls = []

    def add_agent(document: dict) -> bool:
        calls.append(policy_current().version)
        if len(calls) == 1:  # someone publishes between our read and our save
            policy_publish(
                document={**policy_current().document, "loop": {"max_repeats": 7}},
                author="user:grace",
                reason="meanwhile",
            )
        document["agents"]["late-bot"] = {"allow": ["kb.read"], "budgets": {}}
        return True

    version = policy_amend(change=add_agent, author="rule:x", reason="amend")

    assert len(calls) == 2
    assert version.document["agents"]["late-bot"]["allow"] == ["kb.read"]
    assert version.document["loop"]["max_repeats"] == 7  # grace's change survived


def test_the_current_policy_page_follows_policy_and_breaker_changes(client, oncall):
    client.force_login(oncall.user)

    page = client.get(reverse("policy:current")).content.decode()

    assert 'data-live-topics="killswitch,policy,breakers"' in page
    assert 'id="policy-changed"' in page  # where live.js says a newer version is in force
    assert 'data-live-refresh="breaker.updated"' in page
    fragment = client.get(reverse("policy:current"), headers={"HX-Request": "true"})
    body = fragment.content.decode()
    assert body.lstrip().startswith('<section id="policy-tools"')
    assert "Budget ceilings" not in body
