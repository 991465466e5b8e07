"""Policy as code: the YAML format, its validation, normalisation and the rules it implies.

A policy document (the seed's default config is one as it stands)::

    tools:
      allow: ["search.read", "kb.read", "http.get"]
      definitions:                # optional, per tool
        email.send:
          effect: write           # read | write
          expensive: false
          cost_usd: 0.0           # charged per allowed call
          max_calls_per_run: 3    # per-tool cap, null for none
          args_schema: {...}      # JSON Schema for the arguments
          output_schema: {...}    # JSON Schema for the reported output
          max_output_bytes: 65536
          approval: {required: true, reviewers: 2, timeout_seconds: 900}
          breaker: {window: 20, min_calls: 5, failure_rate: 0.5, cooldown_seconds: 30, trial_calls: 2}
    budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15, max_usd: null, max_tokens: null}
    writes: {require_approval: true, reviewers: 1, timeout_seconds: 900}
    loop: {max_repeats: 3}
    breaker: {...}                # defaults for every tool's breaker
    monitoring: {track: [...]}
    kill_switch: {mode_when_enabled: disable_writes}
    agents:                       # optional, per agent: can only narrow the global policy
      support-bot: {allow: ["kb.read"], budgets: {max_tool_calls: 10}}
      # approve_all_writes: true  -> every write of the agent needs approval (drift rules set it)

``normalise`` fills every default, so export -> import gives the same document.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from typing import Any

import jsonschema
import yaml

BUDGET_NAMES = ("max_steps", "max_seconds", "max_tool_calls", "max_usd", "max_tokens")
READ_SUFFIXES = (".read", ".get", ".list", ".search")
KILL_SWITCH_MODES = ("off", "disable_writes", "disable_expensive", "stop_all")

DEFAULT_BREAKER = {
    "window": 20,
    "min_calls": 5,
    "failure_rate": 0.5,
    "cooldown_seconds": 30,
    "trial_calls": 2,
}

_budget_value = {"type": ["integer", "null"], "minimum": 0}
_budgets_schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_steps": _budget_value,
        "max_seconds": _budget_value,
        "max_tool_calls": _budget_value,
        "max_usd": {"type": ["number", "null"], "minimum": 0},
        "max_tokens": _budget_value,
    },
}
_breaker_schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "window": {"type": "integer", "minimum": 1},
        "min_calls": {"type": "integer", "minimum": 1},
        "failure_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "cooldown_seconds": {"type": "integer", "minimum": 0},
        "trial_calls": {"type": "integer", "minimum": 1},
    },
}
_tool_name = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$",
    "maxLength": 200,
}

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "tools": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "allow": {"type": "array", "items": _tool_name, "uniqueItems": True},
                "definitions": {
                    "type": "object",
                    "propertyNames": _tool_name,
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "description": {"type": "string"},
                            "effect": {"enum": ["read", "write"]},
                            "expensive": {"type": "boolean"},
                            "cost_usd": {"type": "number", "minimum": 0},
                            "max_calls_per_run": {"type": ["integer", "null"], "minimum": 1},
                            "args_schema": {"type": ["object", "null"]},
                            "output_schema": {"type": ["object", "null"]},
                            "max_output_bytes": {"type": "integer", "minimum": 1},
                            "approval": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "required": {"type": ["boolean", "null"]},
                                    "reviewers": {"type": "integer", "minimum": 1, "maximum": 5},
                                    "timeout_seconds": {"type": "integer", "minimum": 1},
                                },
                            },
                            "breaker": _breaker_schema,
                        },
                    },
                },
            },
        },
        "budgets": _budgets_schema,
        "writes": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "require_approval": {"type": "boolean"},
                "reviewers": {"type": "integer", "minimum": 1, "maximum": 5},
                "timeout_seconds": {"type": "integer", "minimum": 1},
            },
        },
        "loop": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"max_repeats": {"type": "integer", "minimum": 1}},
        },
        "breaker": _breaker_schema,
        "monitoring": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"track": {"type": "array", "items": {"type": "string"}}},
        },
        "kill_switch": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"mode_when_enabled": {"enum": list(KILL_SWITCH_MODES[1:])}},
        },
        "agents": {
            "type": "object",
            "propertyNames": {"type": "string", "pattern": r"^[-a-zA-Z0-9_]+$"},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "allow": {"type": ["array", "null"], "items": _tool_name, "uniqueItems": True},
                    "budgets": _budgets_schema,
                    # Set by a drift rule (or a person): every write of this agent waits for
                    # a reviewer, whatever the tool's own approval rule says.
                    "approve_all_writes": {"type": "boolean"},
                },
            },
        },
    },
}


class PolicyError(ValueError):
    """The policy document is not valid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def parse_yaml(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(["the policy must be a mapping at the top level"])
    problems = _non_json_values(data, "")
    if problems:
        raise PolicyError(problems)
    return data


def _non_json_values(value: Any, path: str) -> list[str]:
    """YAML can say more than JSON (dates, sets, binary, non-string keys, NaN); a policy is
    stored as JSON, so such values are errors here rather than a crash when it is saved."""
    where = path or "(top)"
    if isinstance(value, dict):
        problems = []
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{where}: key {key!r} must be a string (quote it)")
                continue
            problems.extend(_non_json_values(item, f"{path}/{key}" if path else key))
        return problems
    if isinstance(value, list):
        problems = []
        for index, item in enumerate(value):
            problems.extend(_non_json_values(item, f"{path}/{index}" if path else str(index)))
        return problems
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}: {value!r} is not a finite number"]
    if value is None or isinstance(value, str | bool | int | float):
        return []
    return [f"{where}: {value!r} is not a JSON value (a {type(value).__name__}; quote it)"]


def dump_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a policy document and fill in every default. Raises PolicyError."""
    validator = jsonschema.Draft202012Validator(POLICY_SCHEMA)
    errors = [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    ]
    if errors:
        raise PolicyError(errors)
    raw = copy.deepcopy(raw)
    tools = raw.get("tools", {})
    writes = raw.get("writes", {})
    breaker_defaults = {**DEFAULT_BREAKER, **raw.get("breaker", {})}
    definitions = {}
    for name, definition in sorted(tools.get("definitions", {}).items()):
        approval = definition.get("approval", {})
        for key in ("args_schema", "output_schema"):
            schema = definition.get(key)
            if schema:
                try:
                    jsonschema.Draft202012Validator.check_schema(schema)
                except jsonschema.SchemaError as exc:
                    errors.append(
                        f"tools/definitions/{name}/{key}: not a valid JSON Schema: {exc.message}"
                    )
        definitions[name] = {
            "description": definition.get("description", ""),
            "effect": definition.get("effect", default_effect(name)),
            "expensive": definition.get("expensive", False),
            "cost_usd": definition.get("cost_usd", 0),
            "max_calls_per_run": definition.get("max_calls_per_run"),
            "args_schema": definition.get("args_schema"),
            "output_schema": definition.get("output_schema"),
            "max_output_bytes": definition.get("max_output_bytes", 65536),
            "approval": {
                "required": approval.get("required"),
                "reviewers": approval.get("reviewers", writes.get("reviewers", 1)),
                "timeout_seconds": approval.get(
                    "timeout_seconds", writes.get("timeout_seconds", 900)
                ),
            },
            "breaker": {**breaker_defaults, **definition.get("breaker", {})},
        }
    agents = {}
    for name, rule in sorted(raw.get("agents", {}).items()):
        allow = rule.get("allow")
        agents[name] = {
            "allow": sorted(allow) if allow is not None else None,
            "budgets": {key: rule.get("budgets", {}).get(key) for key in BUDGET_NAMES},
            "approve_all_writes": rule.get("approve_all_writes", False),
        }
    if errors:
        raise PolicyError(errors)
    return {
        "tools": {"allow": sorted(tools.get("allow", [])), "definitions": definitions},
        "budgets": {key: raw.get("budgets", {}).get(key) for key in BUDGET_NAMES},
        "writes": {
            "require_approval": writes.get("require_approval", True),
            "reviewers": writes.get("reviewers", 1),
            "timeout_seconds": writes.get("timeout_seconds", 900),
        },
        "loop": {"max_repeats": raw.get("loop", {}).get("max_repeats", 3)},
        "breaker": breaker_defaults,
        "monitoring": {"track": list(raw.get("monitoring", {}).get("track", []))},
        "kill_switch": {
            "mode_when_enabled": raw.get("kill_switch", {}).get(
                "mode_when_enabled", "disable_writes"
            )
        },
        "agents": agents,
    }


def default_effect(tool: str) -> str:
    """Unknown means dangerous: only a name ending in a read verb is a read."""
    return "read" if tool.endswith(READ_SUFFIXES) else "write"


def canonical_hash(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


@dataclass(frozen=True)
class ToolRule:
    name: str
    effect: str
    expensive: bool
    cost_usd: Decimal
    max_calls_per_run: int | None
    args_schema: dict | None
    output_schema: dict | None
    max_output_bytes: int
    approval_required: bool
    reviewers: int
    timeout_seconds: int
    breaker: dict


class Policy:
    """A normalised policy document with the lookups the gateway needs."""

    def __init__(self, version: int, document: dict[str, Any]):
        self.version = version
        self.document = document

    def tool_rule(self, tool: str) -> ToolRule:
        definition = self.document["tools"]["definitions"].get(tool)
        writes = self.document["writes"]
        if definition is None:
            effect = default_effect(tool)
            return ToolRule(
                name=tool,
                effect=effect,
                expensive=False,
                cost_usd=Decimal("0"),
                max_calls_per_run=None,
                args_schema=None,
                output_schema=None,
                max_output_bytes=65536,
                approval_required=effect == "write" and writes["require_approval"],
                reviewers=writes["reviewers"],
                timeout_seconds=writes["timeout_seconds"],
                breaker=self.document["breaker"],
            )
        approval = definition["approval"]
        required = approval["required"]
        if required is None:
            required = definition["effect"] == "write" and writes["require_approval"]
        return ToolRule(
            name=tool,
            effect=definition["effect"],
            expensive=definition["expensive"],
            cost_usd=Decimal(str(definition["cost_usd"])),
            max_calls_per_run=definition["max_calls_per_run"],
            args_schema=definition["args_schema"],
            output_schema=definition["output_schema"],
            max_output_bytes=definition["max_output_bytes"],
            approval_required=required,
            reviewers=approval["reviewers"],
            timeout_seconds=approval["timeout_seconds"],
            breaker=definition["breaker"],
        )

    def tool_rule_for(self, tool: str, agent_name: str) -> ToolRule:
        """The tool's rule as it applies to one agent (``approve_all_writes`` forces approval)."""
        rule = self.tool_rule(tool)
        agent_rule = self.document["agents"].get(agent_name) or {}
        # .get: versions published before the key existed lack it.
        if rule.effect == "write" and agent_rule.get("approve_all_writes"):
            return replace(rule, approval_required=True)
        return rule

    def is_allowed(self, tool: str, agent_name: str) -> bool:
        if tool not in self.document["tools"]["allow"]:
            return False
        agent_rule = self.document["agents"].get(agent_name)
        if agent_rule is None or agent_rule["allow"] is None:
            return True
        return tool in agent_rule["allow"]

    def allowed_tools(self, agent_name: str) -> list[str]:
        return [t for t in self.document["tools"]["allow"] if self.is_allowed(t, agent_name)]

    def ceilings(self, agent_name: str) -> dict[str, Any]:
        """Global ceilings narrowed by the agent's own; None means no limit."""
        result = dict(self.document["budgets"])
        agent_rule = self.document["agents"].get(agent_name)
        if agent_rule:
            for key, value in agent_rule["budgets"].items():
                if value is not None:
                    result[key] = value if result[key] is None else min(result[key], value)
        return result

    @property
    def loop_max_repeats(self) -> int:
        return self.document["loop"]["max_repeats"]

    @property
    def mode_when_enabled(self) -> str:
        return self.document["kill_switch"]["mode_when_enabled"]


def schema_errors(schema: dict | None, value: Any) -> list[str]:
    if not schema:
        return []
    validator = _validator(json.dumps(schema, sort_keys=True))
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(value)
    ][:20]


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


SEED_POLICY_YAML = """\
tools:
  allow: ["search.read", "kb.read", "http.get"]
budgets:
  max_steps: 30
  max_seconds: 90
  max_tool_calls: 15
writes:
  require_approval: true
monitoring:
  track: ["tool_calls_per_run", "tokens_per_request", "stop_reason", "latency_p95"]
kill_switch:
  mode_when_enabled: "disable_writes"
"""
