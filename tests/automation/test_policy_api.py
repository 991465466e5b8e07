"""Policy as code through the automation API: read the version in force as YAML (on-call and
up), dry-run a draft against recent runs and publish based on a version (admins)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import PolicyVersion
from agents.policy.document import normalise, parse_yaml
from agents.policy.forms import PolicyYamlForm
from agents.policy.selectors import policy_current
from opsconsole.models import AuditEntry
from tests.conftest import logged_in

URL = "/api/v1/policy"
# The fleet's policy, without kb.read: the fleet's two ok runs called it.
STRICTER = """
tools:
  allow: ["search.read", "email.send"]
  definitions:
    email.send: {effect: write}
budgets: {max_tool_calls: 50, max_steps: 50, max_seconds: 600}
"""


@pytest.mark.parametrize("persona", ["oncall", "reviewer", "admin"])
def test_people_with_a_role_read_the_policy_in_force_as_yaml(persona, request, publish_policy):
    version = publish_policy("tools: {allow: [kb.read]}\n", reason="only the kb")
    person = request.getfixturevalue(persona)
    response = person.api.get(URL)
    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["reason"], body["author"]) == (
        version.number,
        "only the kb",
        "system",
    )
    assert normalise(parse_yaml(body["yaml"])) == version.document
    # the YAML the policy page exports
    assert body["yaml"] == logged_in(person).get(reverse("policy:export")).content.decode()


def test_a_person_without_a_role_and_an_agent_cannot_read_it(outsider, agent):
    assert outsider.api.get(URL).status_code == 403
    assert agent.api.get(URL).status_code == 403


@pytest.mark.parametrize("persona", ["outsider", "oncall", "reviewer"])
def test_only_admins_dry_run_and_publish(persona, request, db):
    person = request.getfixturevalue(persona)
    current = policy_current().version
    body = {"yaml": STRICTER, "reason": "tighten", "base_version": current}
    assert person.api.post_json(URL, body).status_code == 403
    assert person.api.post_json(f"{URL}/dry-run", {"yaml": STRICTER}).status_code == 403
    assert policy_current().version == current


def test_publish_based_on_the_current_version(admin, db):
    current = policy_current().version
    response = admin.api.post_json(
        URL, {"yaml": STRICTER, "reason": "no kb", "base_version": current}
    )
    assert response.status_code == 201, response.content
    assert response.json()["version"] == current + 1
    version = PolicyVersion.objects.get(number=current + 1)
    assert (version.author, version.reason) == ("user:ada-admin", "no kb")
    assert version.document["tools"]["allow"] == ["email.send", "search.read"]
    entry = AuditEntry.objects.get(action="policy.publish", target_id=str(current + 1))
    assert (entry.actor, entry.reason) == ("user:ada-admin", "no kb")


def test_a_stale_base_is_a_409_and_saves_nothing(admin, publish_policy):
    started_from = policy_current().version
    theirs = publish_policy("tools: {allow: [kb.read, http.get]}\n", reason="theirs")
    response = admin.api.post_json(
        URL, {"yaml": STRICTER, "reason": "mine", "base_version": started_from}
    )
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "policy_changed"
    assert f"v{theirs.number}" in body["detail"] and "theirs" in body["detail"]
    assert policy_current().version == theirs.number


INVALID = """
tools:
  allow: ["kb.read"]
  definitions:
    kb.read: {effect: sometimes}
budgets: {max_steps: -1}
"""


@pytest.mark.parametrize("text", [INVALID, "tools: [unclosed", "- just a list"])
def test_an_invalid_draft_is_a_400_with_the_editors_problems(admin, text, db):
    form = PolicyYamlForm({"yaml": text, "reason": "x"})
    assert not form.is_valid()
    editor_problems = form.errors["yaml"]
    current = policy_current().version

    for path, body in [
        (URL, {"yaml": text, "reason": "x", "base_version": current}),
        (f"{URL}/dry-run", {"yaml": text}),
    ]:
        response = admin.api.post_json(path, body)
        assert response.status_code == 400, response.content
        assert response.json()["error"] == "invalid_policy"
        assert response.json()["detail"] == editor_problems
    assert policy_current().version == current


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"yaml": STRICTER, "base_version": 1}, "reason"),
        ({"yaml": STRICTER, "reason": "   ", "base_version": 1}, "reason"),
        ({"yaml": STRICTER, "reason": "r"}, "base_version"),
        ({"reason": "r", "base_version": 1}, "yaml"),
    ],
)
def test_publish_needs_a_reason_and_a_base_version(admin, body, field, db):
    current = policy_current().version
    response = admin.api.post_json(URL, body)
    assert response.status_code == 400
    assert field in response.json()["detail"]
    assert policy_current().version == current


def test_the_dry_run_says_which_recent_runs_the_draft_would_stop(admin, fleet):
    current = policy_current().version
    response = admin.api.post_json(f"{URL}/dry-run", {"yaml": STRICTER})
    assert response.status_code == 200, response.content
    body = response.json()
    # ended runs: ok, denied, cancelled, other (the running one is not replayed)
    assert (body["replayed"], body["skipped"], body["stopped"]) == (4, 0, 2)
    stopped = [run for run in body["runs"] if run["newly_stopped"]]
    assert {run["run_id"] for run in stopped} == {fleet.ok.pk, fleet.other.pk}
    assert {run["new_stop_reason"] for run in stopped} == {"tool_denied:kb.read"}
    assert all(run["old_stop_reason"] == "ok" and run["differences"] for run in stopped)
    assert body["changed"] == len(body["runs"]) >= 2
    # nothing saved
    assert policy_current().version == current

    latest_two = admin.api.post_json(f"{URL}/dry-run", {"yaml": STRICTER, "limit": 2}).json()
    assert latest_two["replayed"] == 2 and latest_two["stopped"] == 1


def test_a_control_character_is_an_invalid_policy_not_a_crash(admin, db):
    response = admin.api.post_json(f"{URL}/dry-run", {"yaml": "\x8ctools: {}"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_policy"
    assert response.json()["detail"][0].startswith("not valid YAML")
