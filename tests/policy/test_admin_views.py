"""The kill switch page and the policy editor: everyone with a role reads them, admins change
them."""

from __future__ import annotations

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from agents.models import KillSwitch, PolicyVersion
from agents.policy.document import dump_yaml
from agents.policy.selectors import policy_current
from opsconsole.models import AuditEntry
from tests.conftest import logged_in


def switch() -> KillSwitch:
    return KillSwitch.objects.get(pk=1)


# --- kill switch ------------------------------------------------------------------------------


def test_everyone_with_a_role_sees_who_set_the_switch_and_why(oncall):
    from agents.policy.services import kill_switch_set

    kill_switch_set(mode="disable_writes", reason="mail vendor down", actor="user:ada-admin")
    page = logged_in(oncall).get(reverse("kill_switch")).content.decode()
    assert "Disable writes" in page
    assert "user:ada-admin" in page
    assert "mail vendor down" in page
    assert "Review the change" not in page  # on-call cannot change it


def test_an_admin_changes_the_switch_only_after_confirming_what_it_does(
    admin, agent, start_run, publish_policy
):
    publish_policy(
        'tools: {allow: ["kb.read", "email.send", "browser.open"], definitions: '
        "{browser.open: {effect: read, expensive: true}}}"
    )
    start_run()
    start_run()
    client = logged_in(admin)

    first = client.post(reverse("kill_switch"), {"mode": "disable_writes", "reason": "outage"})
    assert first.status_code == 200
    page = first.content.decode()
    assert "2 active runs" in page
    assert "<code>email.send</code>" in page  # the write goes dark
    assert "<code>kb.read</code>" not in page.split("Tools that go dark")[1]
    assert switch().mode == "off"  # nothing happened yet

    expensive = client.post(reverse("kill_switch"), {"mode": "disable_expensive", "reason": "$"})
    assert "<code>browser.open</code>" in expensive.content.decode()

    done = client.post(
        reverse("kill_switch"),
        {"mode": "disable_writes", "reason": "outage", "confirmed": "True", "from_mode": "off"},
    )
    assert done.status_code == 302
    assert (switch().mode, switch().reason, switch().set_by) == (
        "disable_writes",
        "outage",
        "user:ada-admin",
    )
    assert AuditEntry.objects.filter(action="kill_switch.set").count() == 1


def test_stop_all_confirmation_says_the_runs_stop_now(admin, start_run):
    start_run()
    page = (
        logged_in(admin)
        .post(reverse("kill_switch"), {"mode": "stop_all", "reason": "runaway"})
        .content.decode()
    )
    assert "1 active run will stop now" in page


def test_a_confirmation_made_stale_by_another_change_is_asked_again(admin):
    from agents.policy.services import kill_switch_set

    kill_switch_set(mode="stop_all", reason="someone else", actor="user:other")
    response = logged_in(admin).post(
        reverse("kill_switch"),
        {"mode": "disable_writes", "reason": "mine", "confirmed": "True", "from_mode": "off"},
    )
    assert response.status_code == 200
    assert b"changed to <code>stop_all</code> while you were deciding" in response.content
    assert switch().mode == "stop_all"


def test_changing_the_switch_needs_a_reason(admin):
    response = logged_in(admin).post(
        reverse("kill_switch"), {"mode": "stop_all", "reason": " ", "confirmed": "True"}
    )
    assert response.status_code == 422
    assert b"Say why" in response.content
    assert switch().mode == "off"


def test_an_unknown_mode_is_a_form_error(admin):
    response = logged_in(admin).post(reverse("kill_switch"), {"mode": "panic", "reason": "x"})
    assert response.status_code == 422
    assert switch().mode == "off"


@pytest.mark.parametrize("persona", ["oncall", "reviewer", "outsider"])
def test_only_admins_change_the_switch(db, request, persona):
    response = logged_in(request.getfixturevalue(persona)).post(
        reverse("kill_switch"),
        {"mode": "stop_all", "reason": "x", "confirmed": "True", "from_mode": "off"},
    )
    assert response.status_code == 403
    assert switch().mode == "off"


def test_anonymous_people_cannot_change_the_switch(db):
    response = Client().post(reverse("kill_switch"), {"mode": "stop_all", "reason": "x"})
    assert response.status_code == 302
    assert switch().mode == "off"


def test_the_switch_page_refuses_other_methods(admin):
    assert logged_in(admin).put(reverse("kill_switch")).status_code == 405


# --- policy -----------------------------------------------------------------------------------


def test_saving_yaml_publishes_a_new_version_with_author_reason_and_diff(admin, reviewer):
    document = policy_current().document
    changed = yaml.safe_load(dump_yaml(document))
    changed["budgets"]["max_tool_calls"] = 20
    client = logged_in(admin)
    response = client.post(
        reverse("policy:edit"), {"yaml": dump_yaml(changed), "reason": "more calls"}
    )
    assert response.status_code == 302
    latest = PolicyVersion.objects.order_by("-number").first()
    assert (latest.number, latest.author, latest.reason) == (2, "user:ada-admin", "more calls")
    assert latest.document["budgets"]["max_tool_calls"] == 20
    page = logged_in(reviewer).get(reverse("policy:version", args=[2])).content.decode()
    assert '<span class="diff-del">-  max_tool_calls: 15</span>' in page
    assert '<span class="diff-add">+  max_tool_calls: 20</span>' in page
    assert "more calls" in page


def test_invalid_yaml_or_policy_is_shown_as_form_errors_and_saves_nothing(admin):
    client = logged_in(admin)
    for text in ["tools: [unclosed", "tools: {allow: 5}", "budgets: {max_steps: -1}"]:
        response = client.post(reverse("policy:edit"), {"yaml": text, "reason": "try"})
        assert response.status_code == 422, text
        assert b"The policy was not saved" in response.content
    no_reason = client.post(
        reverse("policy:edit"), {"yaml": dump_yaml(policy_current().document), "reason": ""}
    )
    assert no_reason.status_code == 422
    assert PolicyVersion.objects.count() == 1


def test_import_by_upload_and_export_round_trip(admin, oncall):
    exported = logged_in(oncall).get(reverse("policy:export"))
    assert exported.status_code == 200
    assert exported["Content-Disposition"] == 'attachment; filename="policy-v1.yaml"'
    upload = SimpleUploadedFile("policy.yaml", exported.content, content_type="application/yaml")
    response = logged_in(admin).post(
        reverse("policy:edit"), {"file": upload, "reason": "round trip"}
    )
    assert response.status_code == 302
    assert (
        PolicyVersion.objects.get(number=2).document == PolicyVersion.objects.get(number=1).document
    )
    again = logged_in(oncall).get(reverse("policy:export"), {"version": 2})
    assert again.content == exported.content


def test_the_tool_form_adds_a_write_tool_with_schemas_and_two_reviewers(admin, agent, start_run):
    response = logged_in(admin).post(
        reverse("policy:tool_new"),
        {
            "name": "ticket.update",
            "allowed": "on",
            "effect": "write",
            "cost_usd": "0.01",
            "max_output_bytes": "65536",
            "approval_required": "yes",
            "reviewers": "2",
            "timeout_seconds": "300",
            "args_schema": '{"type": "object", "required": ["id"]}',
            "reason": "let bots close tickets",
        },
    )
    assert response.status_code == 302
    rule = policy_current().tool_rule("ticket.update")
    assert (rule.effect, rule.reviewers, rule.approval_required) == ("write", 2, True)
    assert "ticket.update" in policy_current().document["tools"]["allow"]
    run = start_run()
    answer = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "ticket.update", "args": {}}
    ).json()
    assert answer["stop_reason"] == "invalid_tool_args:ticket.update"  # the next call obeys it


def test_a_bad_schema_in_the_tool_form_is_a_form_error(admin):
    client = logged_in(admin)
    base = {
        "name": "x.get",
        "effect": "read",
        "cost_usd": "0",
        "max_output_bytes": "100",
        "reviewers": "1",
        "timeout_seconds": "60",
        "reason": "r",
    }
    not_json = client.post(reverse("policy:tool_new"), {**base, "args_schema": "{nope"})
    assert not_json.status_code == 422
    assert b"Not valid JSON" in not_json.content
    not_schema = client.post(
        reverse("policy:tool_new"), {**base, "output_schema": '{"type": "nonsense"}'}
    )
    assert not_schema.status_code == 422
    assert b"not a valid JSON Schema" in not_schema.content
    assert PolicyVersion.objects.count() == 1


def test_the_tool_form_edits_an_existing_tool(admin, publish_policy):
    publish_policy('tools: {allow: ["kb.read"], definitions: {kb.read: {cost_usd: 0.5}}}')
    client = logged_in(admin)
    page = client.get(reverse("policy:tool", args=["kb.read"]))
    assert page.context["form"].initial["cost_usd"] == 0.5
    response = client.post(
        reverse("policy:tool", args=["kb.read"]),
        {
            "name": "kb.read",
            "effect": "read",
            "cost_usd": "0.25",
            "max_output_bytes": "1000",
            "reviewers": "1",
            "timeout_seconds": "60",
            "reason": "cheaper",
        },
    )
    assert response.status_code == 302
    assert policy_current().tool_rule("kb.read").cost_usd == pytest.approx(0.25)
    assert "kb.read" not in policy_current().document["tools"]["allow"]  # unticked: disabled


def test_budget_ceilings_global_and_per_agent(admin, agent):
    client = logged_in(admin)
    response = client.post(
        reverse("policy:budgets"),
        {"max_steps": "10", "max_seconds": "60", "max_tool_calls": "5", "reason": "tighter"},
    )
    assert response.status_code == 302
    assert policy_current().document["budgets"]["max_steps"] == 10
    assert policy_current().document["budgets"]["max_usd"] is None
    response = client.post(
        reverse("policy:agent_budgets", args=["support-bot"]),
        {"allow": "kb.read", "max_tool_calls": "2", "reason": "narrow support-bot"},
    )
    assert response.status_code == 302
    rule = policy_current().document["agents"]["support-bot"]
    assert rule["allow"] == ["kb.read"]
    assert rule["budgets"]["max_tool_calls"] == 2
    run = agent.api.post_json("/api/v1/runs", {"task": "t"}).json()
    assert run["budgets"]["max_tool_calls"] == 2


def test_restoring_a_version_makes_a_new_one(admin, publish_policy):
    publish_policy("budgets: {max_steps: 3}")
    client = logged_in(admin)
    no_reason = client.post(reverse("policy:restore", args=[1]), {"reason": ""})
    assert no_reason.status_code == 422
    assert PolicyVersion.objects.count() == 2
    response = client.post(reverse("policy:restore", args=[1]), {"reason": "undo"})
    assert response.status_code == 302
    latest = PolicyVersion.objects.order_by("-number").first()
    assert (latest.number, latest.restored_from, latest.reason) == (3, 1, "undo")
    assert latest.document == PolicyVersion.objects.get(number=1).document
    assert client.post(reverse("policy:restore", args=[99]), {"reason": "x"}).status_code == 404


@pytest.mark.parametrize("persona", ["oncall", "reviewer", "outsider"])
def test_only_admins_change_the_policy(db, request, persona):
    client = logged_in(request.getfixturevalue(persona))
    text = dump_yaml(policy_current().document)
    assert client.post(reverse("policy:edit"), {"yaml": text, "reason": "x"}).status_code == 403
    assert client.post(reverse("policy:restore", args=[1]), {"reason": "x"}).status_code == 403
    assert client.post(reverse("policy:budgets"), {"reason": "x"}).status_code == 403
    assert (
        client.post(reverse("policy:tool_new"), {"name": "a.get", "reason": "x"}).status_code == 403
    )
    assert PolicyVersion.objects.count() == 1


def test_policy_pages_for_on_call_are_read_only(oncall):
    page = logged_in(oncall).get(reverse("policy:current")).content.decode()
    assert "search.read" in page
    assert reverse("policy:edit") not in page
    assert logged_in(oncall).get(reverse("policy:version", args=[1])).status_code == 200
    assert logged_in(oncall).get(reverse("policy:version", args=[42])).status_code == 404


def test_restore_needs_a_post(admin):
    assert logged_in(admin).get(reverse("policy:restore", args=[1])).status_code == 405


def test_the_policy_page_shows_each_tools_breaker(oncall):
    from agents.models import ToolBreaker

    ToolBreaker.objects.create(tool="http.get", state="open", failure_rate=0.8)
    page = logged_in(oncall).get(reverse("policy:current")).content.decode()
    row = page.split('id="tool-http.get"')[1].split("</tr>")[0]
    assert 'class="bad" title="failure rate 0.80">Open</span>' in row
