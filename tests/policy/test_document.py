"""Policy as code: the seed's YAML, the format's rules, import/export round trips, bad input."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from agents.models import PolicyVersion
from agents.policy.document import (
    SEED_POLICY_YAML,
    Policy,
    PolicyError,
    dump_yaml,
    normalise,
    parse_yaml,
)
from agents.policy.selectors import policy_current
from opsconsole.models import AuditEntry

RICH_YAML = """\
tools:
  allow: [search.read, kb.read, http.get, email.send, browser.open, crm.update, tickets.list]
  definitions:
    email.send:
      description: Send an email to a customer
      effect: write
      cost_usd: 0.002
      max_calls_per_run: 3
      args_schema:
        type: object
        required: [to, subject, body]
        additionalProperties: false
        properties:
          to: {type: string, format: email}
          subject: {type: string, maxLength: 200}
          body: {type: string}
      output_schema:
        type: object
        required: [message_id]
        properties:
          message_id: {type: string}
      approval: {reviewers: 2, timeout_seconds: 600}
    browser.open:
      effect: read
      expensive: true
      cost_usd: 0.05
      max_calls_per_run: 5
      max_output_bytes: 200000
      breaker: {window: 10, failure_rate: 0.3, cooldown_seconds: 120}
    kb.read:
      approval: {required: true}
budgets:
  max_steps: 30
  max_seconds: 90
  max_tool_calls: 15
  max_usd: 2.5
  max_tokens: 200000
writes:
  require_approval: true
  reviewers: 1
  timeout_seconds: 900
loop:
  max_repeats: 4
breaker:
  min_calls: 8
monitoring:
  track: [tool_calls_per_run, stop_reason]
kill_switch:
  mode_when_enabled: disable_expensive
agents:
  support-bot:
    allow: [kb.read, email.send, not.global]
    budgets: {max_tool_calls: 10, max_usd: 5}
  research-bot:
    budgets: {max_steps: 100, max_tokens: 50000}
  locked-bot:
    allow: []
"""


def import_policy(*args: str) -> str:
    out = io.StringIO()
    call_command("import_policy", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def export_policy(*args: str) -> str:
    out = io.StringIO()
    call_command("export_policy", *args, stdout=out)
    return out.getvalue()


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def policy_of(yaml_text: str) -> Policy:
    return Policy(0, normalise(parse_yaml(yaml_text)))


# --- the seed's default config ---------------------------------------------------------------
# SEED_POLICY_YAML is the spec's "Config segura por defecto" (seed/000_d194144fc064e8dd.txt,
# verbatim). What it means is pinned key by key below, and docs/policy.md must quote it verbatim.


def test_the_seed_yaml_is_the_policy_the_console_starts_with(db):
    first = PolicyVersion.objects.get(number=1)
    assert first.document == normalise(parse_yaml(SEED_POLICY_YAML))
    assert policy_current().document == first.document


def test_the_seed_yaml_imports_verbatim(db, tmp_path):
    path = write(tmp_path, SEED_POLICY_YAML)

    unchanged = import_policy(path)
    assert "Unchanged" in unchanged and "v1" in unchanged
    assert PolicyVersion.objects.count() == 1

    output = import_policy(path, "--force", "--reason", "re-apply the seed")
    assert "Published policy version 2." in output
    version = PolicyVersion.objects.get(number=2)
    assert version.document == PolicyVersion.objects.get(number=1).document
    assert version.reason == "re-apply the seed"
    assert version.author == "system:cli"


def test_the_seed_policy_means_what_the_spec_says(db, tmp_path):
    import_policy(write(tmp_path, SEED_POLICY_YAML), "--force")
    policy = policy_current()
    assert policy.version == 2

    assert policy.allowed_tools("any-agent") == ["http.get", "kb.read", "search.read"]
    for tool in ("browser.open", "email.send", "search.write", "kb"):
        assert not policy.is_allowed(tool, "any-agent")
    assert policy.ceilings("any-agent") == {
        "max_steps": 30,
        "max_seconds": 90,
        "max_tool_calls": 15,
        "max_usd": None,
        "max_tokens": None,
    }
    email = policy.tool_rule("email.send")
    assert email.effect == "write"
    assert email.approval_required is True
    assert policy.tool_rule("kb.read").approval_required is False
    assert policy.mode_when_enabled == "disable_writes"
    assert policy.document["monitoring"]["track"] == [
        "tool_calls_per_run",
        "tokens_per_request",
        "stop_reason",
        "latency_p95",
    ]


def test_a_run_under_the_seed_policy_gets_its_budgets_and_default_deny(agent, start_run):
    run = start_run(budgets={"max_steps": 500})
    assert run["policy_version"] == 1
    assert run["budgets"]["max_steps"] == 30  # the ceiling wins over what the run asked for
    assert run["budgets"]["max_seconds"] == 90
    assert run["budgets"]["max_tool_calls"] == 15

    allowed = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "search.read", "args": {"q": "x"}}
    )
    assert allowed.status_code == 200, allowed.content
    assert allowed.json()["decision"] == "allow"

    denied = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "browser.open", "args": {}}
    )
    assert denied.status_code == 200, denied.content
    assert denied.json()["decision"] == "stop"
    assert denied.json()["stop_reason"] == "tool_denied:browser.open"


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [SEED_POLICY_YAML, RICH_YAML], ids=["seed", "rich"])
def test_normalising_is_idempotent_and_survives_yaml(text):
    document = normalise(parse_yaml(text))
    assert normalise(document) == document
    assert normalise(parse_yaml(dump_yaml(document))) == document


def test_export_then_import_gives_the_same_rich_policy(db, tmp_path):
    import_policy(write(tmp_path, RICH_YAML), "--reason", "rich")
    original = PolicyVersion.objects.get(number=2)
    exported = export_policy()
    assert exported.startswith("# policy v2 by system:cli at ")
    assert exported.splitlines()[0].endswith(": rich")

    path = write(tmp_path, exported, "exported.yaml")
    assert "Unchanged" in import_policy(path)
    assert PolicyVersion.objects.count() == 2

    import_policy(path, "--force")
    copy = PolicyVersion.objects.get(number=3)
    assert copy.document == original.document
    assert copy.document == normalise(parse_yaml(RICH_YAML))
    # And the copy exports to the same YAML body (only the header line differs).
    assert export_policy().split("\n", 1)[1] == exported.split("\n", 1)[1]


def test_export_writes_an_older_version_to_a_file(db, tmp_path, publish_policy):
    publish_policy(RICH_YAML, reason="two\nlines")
    target = tmp_path / "v1.yaml"

    output = export_policy("--version", "1", "--output", str(target))

    assert output.strip() == f"Wrote policy v1 to {target}."
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# policy v1 by system at ")
    assert normalise(parse_yaml(text)) == PolicyVersion.objects.get(number=1).document
    assert "two lines" in export_policy("--version", "2").splitlines()[0]


def test_exporting_a_missing_version_is_an_error(db):
    with pytest.raises(CommandError, match="no policy version 9"):
        export_policy("--version", "9")
    with pytest.raises(CommandError, match="version numbers start at 1"):
        export_policy("--version", "0")


def test_a_policy_can_be_imported_from_standard_input(db, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(RICH_YAML))
    output = import_policy("-", "--actor", "ada-admin")
    assert "Published policy version 2." in output
    version = PolicyVersion.objects.get(number=2)
    assert version.author == "user:ada-admin"
    assert version.reason == "imported from standard input"
    assert AuditEntry.objects.filter(action="policy.publish", target_id="2").exists()


# --- invalid input changes nothing ------------------------------------------------------------

INVALID = {
    "yaml_syntax": ("tools:\n  allow: [search.read\n", "not valid YAML"),
    "not_a_mapping": ("- search.read\n- kb.read\n", "must be a mapping at the top level"),
    "unknown_top_level_key": (
        SEED_POLICY_YAML + "budget:\n  max_steps: 3\n",
        "(top): Additional properties are not allowed ('budget' was unexpected)",
    ),
    "unknown_key_in_a_definition": (
        "tools:\n  definitions:\n    email.send: {effect: write, reviewers: 2}\n",
        "tools/definitions/email.send: Additional properties are not allowed",
    ),
    "unknown_key_in_monitoring": (
        "monitoring:\n  trak: [stop_reason]\n",
        "monitoring: Additional properties are not allowed ('trak' was unexpected)",
    ),
    "bad_budget_type": (
        "budgets:\n  max_steps: thirty\n",
        "budgets/max_steps: 'thirty' is not of type 'integer', 'null'",
    ),
    "negative_budget": ("budgets:\n  max_tool_calls: -1\n", "budgets/max_tool_calls: -1 is less"),
    "bad_effect": (
        "tools:\n  definitions:\n    x.do: {effect: delete}\n",
        "tools/definitions/x.do/effect: 'delete' is not one of ['read', 'write']",
    ),
    "bad_kill_switch_mode": (
        "kill_switch:\n  mode_when_enabled: off\n",
        "kill_switch/mode_when_enabled: False is not one of",
    ),
    "invalid_json_schema_in_a_definition": (
        "tools:\n  allow: [email.send]\n  definitions:\n"
        "    email.send:\n      args_schema: {type: strng}\n",
        "tools/definitions/email.send/args_schema: not a valid JSON Schema",
    ),
    "bad_tool_name": ('tools:\n  allow: ["rm -rf"]\n', "tools/allow/0: 'rm -rf' does not match"),
    "a_yaml_date_is_not_json": (
        "tools:\n  definitions:\n    a.read:\n      description: 2024-01-01\n",
        "tools/definitions/a.read/description: datetime.date(2024, 1, 1) is not a JSON value",
    ),
}


@pytest.mark.parametrize("text, problem", list(INVALID.values()), ids=list(INVALID))
def test_an_invalid_policy_is_refused_with_its_problem_and_changes_nothing(
    db, tmp_path, text, problem
):
    versions_before = PolicyVersion.objects.count()
    audits_before = AuditEntry.objects.count()

    with pytest.raises(CommandError) as raised:
        import_policy(write(tmp_path, text))

    message = str(raised.value)
    assert "nothing was changed" in message
    assert problem in message
    assert PolicyVersion.objects.count() == versions_before
    assert AuditEntry.objects.count() == audits_before
    assert policy_current().version == 1


def test_every_problem_is_listed_not_just_the_first(db, tmp_path):
    text = (
        "budgets: {max_steps: many}\n"
        "writes: {reviewers: 9}\n"
        "tools:\n  definitions:\n    a.write: {output_schema: {minimum: ten}}\n"
    )
    with pytest.raises(PolicyError) as raised:
        normalise(parse_yaml(text))
    assert len(raised.value.errors) == 2  # schema problems first, JSON Schema checks after
    with pytest.raises(CommandError) as raised_cli:
        import_policy(write(tmp_path, text))
    message = str(raised_cli.value)
    assert "2 problems" in message
    assert "budgets/max_steps" in message and "writes/reviewers" in message

    only_schema = "tools:\n  definitions:\n    a.write: {output_schema: {minimum: ten}}\n"
    with pytest.raises(CommandError, match="a.write/output_schema: not a valid JSON Schema"):
        import_policy(write(tmp_path, only_schema))
    assert PolicyVersion.objects.count() == 1


def test_a_missing_file_is_an_error(db, tmp_path):
    with pytest.raises(CommandError, match="No such file"):
        import_policy(str(tmp_path / "nope.yaml"))


# --- what the format means --------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool, effect",
    [
        ("kb.read", "read"),
        ("http.get", "read"),
        ("tickets.list", "read"),
        ("docs.search", "read"),
        ("crm.update", "write"),
        ("browser.open", "write"),
        ("search", "write"),
        ("files.readme", "write"),
        ("search.reader", "write"),
        ("kb.READ", "write"),
    ],
)
def test_an_undefined_tool_is_a_write_unless_its_name_ends_in_a_read_verb(tool, effect):
    policy = policy_of(f'tools:\n  allow: ["{tool}"]\n')
    rule = policy.tool_rule(tool)
    assert policy.is_allowed(tool, "any-agent")
    assert rule.effect == effect
    assert rule.approval_required is (effect == "write")
    assert rule.max_calls_per_run is None and rule.args_schema is None


def test_undefined_writes_need_no_approval_when_writes_do_not_require_it():
    policy = policy_of("tools: {allow: [crm.update]}\nwrites: {require_approval: false}\n")
    rule = policy.tool_rule("crm.update")
    assert rule.effect == "write"
    assert rule.approval_required is False


def test_a_definition_overrides_the_defaults():
    policy = policy_of(RICH_YAML)

    email = policy.tool_rule("email.send")
    assert email.effect == "write"
    assert email.approval_required is True  # inherited from writes.require_approval
    assert (email.reviewers, email.timeout_seconds) == (2, 600)
    assert str(email.cost_usd) == "0.002"
    assert email.max_calls_per_run == 3
    assert email.args_schema["required"] == ["to", "subject", "body"]

    browser = policy.tool_rule("browser.open")
    assert browser.effect == "read" and browser.expensive is True
    assert browser.approval_required is False
    assert browser.max_output_bytes == 200000
    # Per-tool breaker fields over the global breaker over the built-in defaults.
    assert browser.breaker == {
        "window": 10,
        "min_calls": 8,
        "failure_rate": 0.3,
        "cooldown_seconds": 120,
        "trial_calls": 2,
    }

    assert policy.tool_rule("kb.read").approval_required is True  # a read may demand approval
    undefined = policy.tool_rule("crm.update")
    assert undefined.effect == "write" and undefined.approval_required is True
    assert undefined.breaker["min_calls"] == 8
    assert policy.loop_max_repeats == 4
    assert policy.mode_when_enabled == "disable_expensive"


def test_per_agent_rules_only_narrow_the_global_policy():
    policy = policy_of(RICH_YAML)

    # An agent's allowlist cannot add a tool the global policy does not allow.
    assert policy.allowed_tools("support-bot") == ["email.send", "kb.read"]
    assert not policy.is_allowed("not.global", "support-bot")
    assert not policy.is_allowed("search.read", "support-bot")
    # No allowlist of its own: every globally allowed tool; an empty one: nothing.
    assert policy.allowed_tools("research-bot") == policy.document["tools"]["allow"]
    assert policy.allowed_tools("unknown-bot") == policy.document["tools"]["allow"]
    assert policy.allowed_tools("locked-bot") == []

    # Ceilings take the smaller of global and agent; a larger agent value does not raise them.
    assert policy.ceilings("support-bot") == {
        "max_steps": 30,
        "max_seconds": 90,
        "max_tool_calls": 10,
        "max_usd": 2.5,
        "max_tokens": 200000,
    }
    assert policy.ceilings("research-bot")["max_steps"] == 30
    assert policy.ceilings("research-bot")["max_tokens"] == 50000
    assert policy.ceilings("unknown-bot") == policy.document["budgets"]


def test_an_agent_ceiling_applies_where_the_global_policy_has_none():
    policy = policy_of("agents:\n  support-bot:\n    budgets: {max_usd: 1.5}\n")
    assert policy.ceilings("support-bot")["max_usd"] == 1.5
    assert policy.ceilings("other-bot")["max_usd"] is None


def test_an_empty_policy_denies_every_tool_and_fills_every_default():
    document = normalise(parse_yaml(""))
    policy = Policy(0, document)
    assert policy.allowed_tools("any-agent") == []
    assert document["writes"] == {"require_approval": True, "reviewers": 1, "timeout_seconds": 900}
    assert document["loop"] == {"max_repeats": 3}
    assert document["kill_switch"] == {"mode_when_enabled": "disable_writes"}
    assert document["breaker"] == {
        "window": 20,
        "min_calls": 5,
        "failure_rate": 0.5,
        "cooldown_seconds": 30,
        "trial_calls": 2,
    }


def test_the_examples_in_the_format_reference_are_valid_policies():
    reference = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", reference, flags=re.DOTALL)
    assert len(blocks) == 2
    seed, fuller = blocks
    assert seed == SEED_POLICY_YAML
    policy = policy_of(fuller)
    assert policy.allowed_tools("support-bot") == ["email.send", "kb.read"]
    assert policy.ceilings("support-bot")["max_tool_calls"] == 10
    assert policy.tool_rule("email.send").reviewers == 2
    assert policy.tool_rule("browser.open").expensive is True
