"""Kill switch, agents and keys, the policy editor, the audit log and the overview."""

from __future__ import annotations

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from agents.models import Agent, AgentKey, KillSwitch, PolicyVersion, Run
from agents.policy.document import dump_yaml
from agents.policy.selectors import policy_current
from opsconsole.models import AuditEntry


def logged_in(person) -> Client:
    client = Client()
    client.force_login(person.user)
    return client


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


# --- agents and keys --------------------------------------------------------------------------


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

    from tests.conftest import JsonClient

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
    assert client.get(reverse("agents:detail", args=["support-bot"])).status_code == 403
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


# --- audit log --------------------------------------------------------------------------------


def test_the_audit_log_shows_before_and_after_and_filters(oncall, admin, agent, start_run):
    from agents.policy.services import kill_switch_set

    run = start_run()
    logged_in(oncall).post(reverse("runs:cancel", args=[run["id"]]), {"reason": "stuck"})
    kill_switch_set(mode="disable_writes", reason="outage", actor="user:ada-admin")
    client = logged_in(oncall)
    page = client.get(reverse("audit")).content.decode()
    assert "run.cancel" in page and "kill_switch.set" in page and "agent.create" in page
    assert "&quot;mode&quot;: &quot;disable_writes&quot;" in page  # after
    assert "&quot;mode&quot;: &quot;off&quot;" in page  # before
    only = client.get(reverse("audit"), {"action": "run."})
    assert {e.action for e in only.context["entries"]} == {"run.cancel"}
    by_actor = client.get(reverse("audit"), {"actor": "olivia"})
    assert {e.actor for e in by_actor.context["entries"]} == {"user:olivia-oncall"}
    target = client.get(reverse("audit"), {"target_type": "run", "target_id": str(run["id"])})
    assert len(target.context["entries"]) == 1


def test_the_audit_log_pages_by_id_with_constant_queries(oncall, django_assert_num_queries):
    from opsconsole.audit import audit_record

    for i in range(60):
        audit_record(actor="system", action="test.thing", target_type="thing", target_id=i)
    client = logged_in(oncall)
    client.get(reverse("audit"))
    # session, user, role, kill switch, nav count, the page
    with django_assert_num_queries(6):
        first = client.get(reverse("audit"))
    assert len(first.context["entries"]) == 50
    before = first.context["entries"][-1].pk
    with django_assert_num_queries(6):
        second = client.get(reverse("audit"), {"before": before})
    ids = [e.pk for e in first.context["entries"]] + [e.pk for e in second.context["entries"]]
    assert len(ids) == len(set(ids)) == AuditEntry.objects.count()


# --- overview ---------------------------------------------------------------------------------


def test_the_overview_shows_running_runs_pending_approvals_switch_and_stops(
    oncall, agent, outsider_agent, start_run
):
    running = start_run(task="still going")
    stopped = start_run(outsider_agent)
    outsider_agent.api.post_json(
        f"/api/v1/runs/{stopped['id']}/tool-calls", {"tool": "shell.exec", "args": {}}
    )
    page = logged_in(oncall).get(reverse("overview")).content.decode()
    assert f'href="{reverse("runs:detail", args=[running["id"]])}"' in page
    assert "<code>tool_denied</code>" in page
    assert "other-bot" in page.split("most stops")[1]
    assert "Nothing waits for a reviewer" in page
    assert Run.objects.count() == 2


def test_the_overview_fragment_refreshes_alone(oncall):
    response = logged_in(oncall).get(reverse("overview"), HTTP_HX_REQUEST="true")
    assert response.content.decode().lstrip().startswith('<div id="overview-stats"')


def test_the_policy_page_shows_each_tools_breaker(oncall):
    from agents.models import ToolBreaker

    ToolBreaker.objects.create(tool="http.get", state="open", failure_rate=0.8)
    page = logged_in(oncall).get(reverse("policy:current")).content.decode()
    row = page.split('id="tool-http.get"')[1].split("</tr>")[0]
    assert 'class="bad" title="failure rate 0.80">Open</span>' in row


def test_the_agents_table_refreshes_itself_live(admin, agent):
    client = logged_in(admin)

    page = client.get(reverse("agents:list")).content.decode()
    assert 'data-live-topics="killswitch,agents"' in page
    assert 'data-live-refresh="agents.changed"' in page
    fragment = client.get(reverse("agents:list"), headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<table id="agents-table"')
    assert agent.agent.name in fragment
    assert "Create an agent" not in fragment
