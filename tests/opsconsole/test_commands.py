"""Management commands: create_agent, killswitch and create_user (policy import/export are in
tests/policy/test_document.py). Each is thin over a service, so these pin the output and the
database state."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from agents.models import Agent, AgentKey, KillSwitch, PolicyVersion
from agents.policy.selectors import policy_current
from opsconsole import roles
from opsconsole.models import AuditEntry, UserToken
from tests.conftest import JsonClient

AGENT_KEY = re.compile(r"aok_[A-Za-z0-9_\-]+")
USER_TOKEN = re.compile(r"API token: (aou_[A-Za-z0-9_\-]+)")
PASSWORD = re.compile(r"Password:\s+(\S+)")


def run(command: str, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- create_agent -----------------------------------------------------------------------------


def test_create_agent_prints_a_key_once_that_starts_runs(db):
    out, err = run("create_agent", "billing-bot", "--description", "answers billing questions")

    raw_key = max(AGENT_KEY.findall(out), key=len)
    assert len(raw_key) > 40
    assert out.count(raw_key) == 1
    assert "Store it now: it will not be shown again" in out
    assert err == ""

    agent = Agent.objects.get(name="billing-bot")
    assert agent.description == "answers billing questions"
    assert agent.enabled is True
    response = JsonClient(raw_key).post_json("/api/v1/runs", {"task": "refund order 42"})
    assert response.status_code == 201, response.content
    assert response.json()["agent"] == "billing-bot"

    # Only the hash is kept: the raw key is in no column of any key row.
    row = AgentKey.objects.get(agent=agent)
    assert row.key_hash == hashlib.sha256(raw_key.encode()).hexdigest()
    assert raw_key.startswith(row.prefix) and len(row.prefix) < len(raw_key)
    for values in AgentKey.objects.values():
        assert not any(raw_key in str(value) for value in values.values())
    assert AuditEntry.objects.filter(action="agent_key.issue", target_id="billing-bot").exists()


def test_create_agent_with_tools_gives_it_its_own_allowlist(db):
    out, err = run("create_agent", "kb-bot", "--tool", "kb.read", "--tool", "email.send")

    assert "Its own allowlist: email.send, kb.read." in out
    assert "email.send is not on the global allowlist" in err
    assert "kb.read" not in err
    policy = policy_current()
    assert policy.version == 2
    assert PolicyVersion.objects.get(number=2).reason == "allowlist for new agent kb-bot"
    assert policy.document["agents"]["kb-bot"]["allow"] == ["email.send", "kb.read"]
    # Narrowing only: the global policy still decides, so email.send stays denied.
    assert policy.allowed_tools("kb-bot") == ["kb.read"]


def test_create_agent_without_tools_leaves_the_policy_alone(db):
    out, _ = run("create_agent", "plain-bot")
    assert "every globally allowed tool (now: http.get, kb.read, search.read)" in out
    assert PolicyVersion.objects.count() == 1


def test_create_agent_refuses_an_existing_name_and_changes_nothing(db):
    run("create_agent", "dup-bot")
    counts = (Agent.objects.count(), AgentKey.objects.count(), PolicyVersion.objects.count())

    with pytest.raises(CommandError, match="An agent named 'dup-bot' already exists"):
        run("create_agent", "dup-bot", "--tool", "kb.read")

    after = (Agent.objects.count(), AgentKey.objects.count(), PolicyVersion.objects.count())
    assert after == counts


@pytest.mark.parametrize(
    "args, problem",
    [
        (["support bot"], "not a valid agent name"),
        (["bot/1"], "not a valid agent name"),
        (["ok-bot", "--tool", "rm -rf"], "Not a valid tool name: 'rm -rf'"),
        (["ok-bot", "--tool", "kb..read"], "Not a valid tool name"),
    ],
)
def test_create_agent_refuses_bad_names_and_changes_nothing(db, args, problem):
    with pytest.raises(CommandError, match=problem):
        run("create_agent", *args)
    assert not Agent.objects.exists()
    assert not AgentKey.objects.exists()
    assert PolicyVersion.objects.count() == 1


# --- killswitch -------------------------------------------------------------------------------


def test_killswitch_sets_the_mode_and_audits_it(db):
    out, _ = run("killswitch", "disable_writes", "--reason", "vendor outage")

    assert "Kill switch: ON, mode disable_writes" in out
    assert "set by system:cli" in out and "reason: vendor outage" in out
    switch = KillSwitch.objects.get(pk=1)
    assert (switch.mode, switch.reason, switch.set_by) == (
        "disable_writes",
        "vendor outage",
        "system:cli",
    )
    entry = AuditEntry.objects.filter(action="kill_switch.set").latest("id")
    assert entry.actor == "system:cli"
    assert entry.reason == "vendor outage"
    assert entry.before["mode"] == "off"
    assert entry.after["mode"] == "disable_writes"


@pytest.mark.parametrize("mode", ["disable_writes", "disable_expensive", "stop_all", "on"])
def test_killswitch_refuses_to_turn_on_without_a_reason(db, mode):
    audits = AuditEntry.objects.count()
    with pytest.raises(CommandError, match="A reason is required"):
        run("killswitch", mode, "--reason", "   ")
    assert KillSwitch.objects.get(pk=1).mode == "off"
    assert AuditEntry.objects.count() == audits


def test_killswitch_off_needs_no_reason(db):
    run("killswitch", "stop_all", "--reason", "incident 42")
    out, _ = run("killswitch", "off", "--actor", "ada-admin")
    assert out.startswith("Kill switch: off")
    switch = KillSwitch.objects.get(pk=1)
    assert switch.mode == "off" and switch.set_by == "user:ada-admin"
    assert (
        AuditEntry.objects.filter(action="kill_switch.set").latest("id").actor == "user:ada-admin"
    )


def test_killswitch_on_means_the_policys_mode_when_enabled(db, publish_policy):
    run("killswitch", "on", "--reason", "seed default")
    assert KillSwitch.objects.get(pk=1).mode == "disable_writes"

    publish_policy("kill_switch: {mode_when_enabled: disable_expensive}\n")
    run("killswitch", "on", "--reason", "browser vendor is flaky")
    assert KillSwitch.objects.get(pk=1).mode == "disable_expensive"


def test_killswitch_without_a_mode_shows_the_state_and_changes_nothing(db):
    out, _ = run("killswitch")
    assert out.strip() == "Kill switch: off"
    assert not AuditEntry.objects.filter(action="kill_switch.set").exists()


def test_killswitch_refuses_an_unknown_mode(db):
    with pytest.raises(CommandError, match="invalid choice: 'panic'"):
        run("killswitch", "panic", "--reason", "x")
    assert KillSwitch.objects.get(pk=1).mode == "off"


def test_killswitch_stop_all_from_the_shell_refuses_new_runs(agent):
    run("killswitch", "stop_all", "--reason", "agents are the load generator")
    response = agent.api.post_json("/api/v1/runs", {"task": "anything"})
    assert response.status_code == 409
    assert response.json()["stop_reason"] == "kill_switch"


# --- create_user ------------------------------------------------------------------------------


def created_credentials(out: str) -> tuple[str, str]:
    password, token = PASSWORD.search(out), USER_TOKEN.search(out)
    assert password and token, out
    return password.group(1), token.group(1)


@pytest.mark.parametrize("role", roles.ROLES)
def test_create_user_prints_a_password_and_token_that_work(db, role):
    out, _ = run("create_user", "casey", "--role", role, "--email", "casey@example.com")
    password, token = created_credentials(out)
    assert "will not be shown again" in out

    user = User.objects.get(username="casey")
    assert user.email == "casey@example.com"
    assert list(user.groups.values_list("name", flat=True)) == [role]
    assert roles.role_of(user) == role
    assert len(password) >= 24 and user.check_password(password)

    assert Client().login(username="casey", password=password)
    response = JsonClient(token).get("/api/v1/kill-switch")
    assert response.status_code == 200, response.content
    assert response.json()["mode"] == "off"

    stored = UserToken.objects.get(user=user)
    assert stored.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(list(UserToken.objects.values()))
    assert password not in user.password
    entry = AuditEntry.objects.get(action="user.create", target_id="casey")
    assert entry.actor == "system:cli" and entry.after["role"] == role


def test_only_an_admin_token_from_create_user_may_set_the_kill_switch(db):
    _, oncall_token = created_credentials(run("create_user", "olga", "--role", "oncall")[0])
    _, admin_token = created_credentials(run("create_user", "adam", "--role", "admin")[0])
    body = {"mode": "disable_writes", "reason": "test"}

    assert JsonClient(oncall_token).put_json("/api/v1/kill-switch", body).status_code == 403
    assert KillSwitch.objects.get(pk=1).mode == "off"
    assert JsonClient(admin_token).put_json("/api/v1/kill-switch", body).status_code == 200
    assert KillSwitch.objects.get(pk=1).mode == "disable_writes"


def test_create_user_refuses_an_existing_user_and_changes_nothing(db):
    out, _ = run("create_user", "casey", "--role", "oncall")
    password, token = created_credentials(out)

    with pytest.raises(CommandError, match="already exists; use --reset"):
        run("create_user", "casey", "--role", "admin")

    user = User.objects.get(username="casey")
    assert user.check_password(password)
    assert roles.role_of(user) == "oncall"
    assert UserToken.objects.filter(user=user).count() == 1


def test_create_user_reset_sets_a_new_password_token_and_role(db):
    old_password, old_token = created_credentials(
        run("create_user", "casey", "--role", "oncall")[0]
    )

    out, _ = run("create_user", "casey", "--role", "admin", "--reset")
    new_password, new_token = created_credentials(out)
    assert "Revoked 1 earlier API token." in out

    user = User.objects.get(username="casey")
    assert list(user.groups.values_list("name", flat=True)) == ["admin"]
    assert not user.check_password(old_password)
    assert Client().login(username="casey", password=new_password)
    assert JsonClient(old_token).get("/api/v1/kill-switch").status_code == 401
    assert JsonClient(new_token).get("/api/v1/kill-switch").status_code == 200
    entry = AuditEntry.objects.get(action="user.reset", target_id="casey")
    assert entry.before["role"] == "oncall" and entry.after["role"] == "admin"


@pytest.mark.parametrize(
    "args, problem",
    [
        (["ghost", "--role", "oncall", "--reset"], "no user 'ghost' to reset"),
        (["casey", "--role", "owner"], "invalid choice: 'owner'"),
        (["casey", "--role", "admin", "--email", "not-an-email"], "not a valid email"),
        (["casey smith", "--role", "admin"], "not a valid username"),
    ],
)
def test_create_user_refuses_bad_input_and_creates_nothing(db, args, problem):
    with pytest.raises(CommandError, match=problem):
        run("create_user", *args)
    assert not User.objects.exists()
    assert not UserToken.objects.exists()
