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
      # mode: observe             -> decisions are recorded as "would have", the agent is
      #                              allowed (default enforce; the agent's page switches it)
      # on_refusal / max_refusals -> the agent's own answer to a denial (see refusals)
    refusals:                     # a denied tool or invalid arguments:
      on_refusal: stop_run        # stop_run (ends the run) | refuse_call (refuses that call only)
      max_refusals: 3             # with refuse_call: the refusal past this many stops the run
    mcp:                          # upstream MCP servers behind the console's /mcp (docs/mcp.md)
      servers:
        files: {url: "https://files.example/mcp", headers: {Authorization: "Bearer ${FILES_TOKEN}"}}
        git: {command: ["git-mcp", "--stdio"], env: {GIT_TOKEN: "${GIT_TOKEN}"}}
      hold_seconds: {default: 25, clients: {claude-code: 240, openai-mcp: 3}}
    prices:                       # USD per million tokens, by model (or model-name prefix): what
      gpt-4o-mini: {input_per_million: 0.15, output_per_million: 0.60}  # observed model steps
                                  # cost when the client sends no cost (agents/telemetry)

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
import jsonschema_rs
import yaml

BUDGET_NAMES = ("max_steps", "max_seconds", "max_tool_calls", "max_usd", "max_tokens")
READ_SUFFIXES = (".read", ".get", ".list", ".search")
KILL_SWITCH_MODES = ("off", "disable_writes", "disable_expensive", "stop_all")
AGENT_MODES = ("enforce", "observe")  # agents.models.AgentMode

# A policy is written by people and read on every decision: it may not make the server fetch,
# recurse or backtrack without bound (docs/reliability.md, "policy input").
MAX_DOCUMENT_DEPTH = 64  # nesting of mappings and lists, in the YAML and in any schema
MAX_DOCUMENT_NODES = 100_000  # values after YAML aliases are expanded
MAX_DOCUMENT_BYTES = 256 * 1024  # of YAML: parsing costs about 2.5 us a character
MAX_TOOL_NAME = 128
MAX_APPROVAL_TIMEOUT_SECONDS = (
    30 * 86400
)  # a request nobody decides in 30 days has expired  # the MCP convention: 1-128 characters of [A-Za-z0-9_.-]
# ... as dot-separated words (no leading, trailing or double dot); the gateway API takes the same.
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$"


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
    "pattern": TOOL_NAME_PATTERN,
    "maxLength": MAX_TOOL_NAME,
}

REFUSAL_ACTIONS = ("stop_run", "refuse_call")
MCP_SERVER_NAME_PATTERN = r"^[A-Za-z0-9_\-]+$"  # the prefix of its tools' names: no dots
MCP_DEFAULT_HOLD_SECONDS = 25
# How long known MCP hosts wait for a tool call (research/mcp.md): a held call ends well before.
# The policy's mcp.hold_seconds.clients overrides these; other clients get its default.
MCP_KNOWN_CLIENT_HOLD_SECONDS = {"claude-code": 240.0, "claude-ai": 45.0, "openai-mcp": 3.0}
_string_map = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 4096}}
_mcp_schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "servers": {
            "type": "object",
            "propertyNames": {
                "type": "string",
                "pattern": MCP_SERVER_NAME_PATTERN,
                "maxLength": 64,
            },
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                # Exactly one of url (Streamable HTTP) and command (stdio).
                "oneOf": [{"required": ["url"]}, {"required": ["command"]}],
                "properties": {
                    "url": {"type": "string", "pattern": "^https?://", "maxLength": 2048},
                    "command": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 4096},
                        "minItems": 1,
                    },
                    "env": _string_map,
                    "headers": _string_map,
                    "description": {"type": "string"},
                    "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                    "refresh_seconds": {"type": "number", "minimum": 0, "maximum": 86400},
                },
            },
        },
        "hold_seconds": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "default": {"type": "number", "minimum": 0, "maximum": 3600},
                "clients": {
                    "type": "object",
                    "additionalProperties": {"type": "number", "minimum": 0, "maximum": 3600},
                },
            },
        },
    },
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
                                    "timeout_seconds": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "maximum": MAX_APPROVAL_TIMEOUT_SECONDS,
                                    },
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
                "timeout_seconds": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_APPROVAL_TIMEOUT_SECONDS,
                },
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
        "refusals": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "on_refusal": {"enum": list(REFUSAL_ACTIONS)},
                "max_refusals": {"type": "integer", "minimum": 0},
            },
        },
        "mcp": _mcp_schema,
        "prices": {
            "type": "object",
            "propertyNames": {"type": "string", "minLength": 1, "maxLength": 200},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["input_per_million", "output_per_million"],
                "properties": {
                    "input_per_million": {"type": "number", "minimum": 0},
                    "output_per_million": {"type": "number", "minimum": 0},
                },
            },
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
                    # observe: every decision is made and recorded, the answer is allow.
                    "mode": {"enum": list(AGENT_MODES)},
                    # The agent's own answer to a denial (refusals), null: the global one.
                    "on_refusal": {"enum": [*REFUSAL_ACTIONS, None]},
                    "max_refusals": {"type": ["integer", "null"], "minimum": 0},
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
    if len(text) > MAX_DOCUMENT_BYTES:
        raise PolicyError([f"the policy is longer than {MAX_DOCUMENT_BYTES // 1024} KB"])
    try:
        loader = _BoundedLoader(text)  # a control character fails here, in the reader
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"]) from None
    try:
        node = loader.get_single_node()
        _check_expansion(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(["the policy must be a mapping at the top level"])
    problems = _non_json_values(data, "")
    if problems:
        raise PolicyError(problems)
    return data


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting past MAX_DOCUMENT_DEPTH as it composes (before Python's
    recursion limit: 50,000 "[" would otherwise be a RecursionError)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DOCUMENT_DEPTH:
                raise PolicyError([f"nested deeper than {MAX_DOCUMENT_DEPTH} levels"])
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1


def _check_expansion(root: yaml.Node | None) -> None:
    """Refuse a document whose aliases expand past MAX_DOCUMENT_NODES values (a "billion
    laughs" of a few hundred bytes), refer to themselves, or nest past MAX_DOCUMENT_DEPTH.

    Sizes are counted on the composed node graph, where an alias is the same node object again,
    so the count costs one visit per distinct node however large the expansion would be.
    """
    if root is None:
        return
    sizes: dict[int, int] = {}
    # Iterative post-order walk: (node, depth, children done?).
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    open_nodes: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DOCUMENT_DEPTH:
            raise PolicyError([f"nested deeper than {MAX_DOCUMENT_DEPTH} levels"])
        children = _children(node)
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_DOCUMENT_NODES:
                raise PolicyError(
                    [
                        f"the document expands to more than {MAX_DOCUMENT_NODES:,} values "
                        "(YAML aliases); write the repeated parts out"
                    ]
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise PolicyError(["a YAML alias refers to the value that contains it"])
        open_nodes.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


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
                errors.extend(
                    f"tools/definitions/{name}/{key}: {problem}"
                    for problem in schema_problems(schema)
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
            "mode": rule.get("mode", "enforce"),
            "on_refusal": rule.get("on_refusal"),
            "max_refusals": rule.get("max_refusals"),
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
        "refusals": {
            "on_refusal": raw.get("refusals", {}).get("on_refusal", "stop_run"),
            "max_refusals": raw.get("refusals", {}).get("max_refusals", 3),
        },
        "mcp": _mcp_normalise(raw.get("mcp", {})),
        "prices": {name: dict(price) for name, price in sorted(raw.get("prices", {}).items())},
    }


def _mcp_normalise(raw: dict[str, Any]) -> dict[str, Any]:
    servers = {}
    for name, server in sorted(raw.get("servers", {}).items()):
        servers[name] = {
            **({"url": server["url"]} if "url" in server else {"command": server["command"]}),
            "env": dict(sorted(server.get("env", {}).items())),
            "headers": dict(sorted(server.get("headers", {}).items())),
            "description": server.get("description", ""),
            "timeout_seconds": server.get("timeout_seconds", 30),
            "refresh_seconds": server.get("refresh_seconds", 60),
        }
    hold = raw.get("hold_seconds", {})
    return {
        "servers": servers,
        "hold_seconds": {
            "default": hold.get("default", MCP_DEFAULT_HOLD_SECONDS),
            "clients": dict(sorted(hold.get("clients", {}).items())),
        },
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


def kill_switch_turns_off(mode: str, rule: ToolRule) -> bool:
    """Whether the kill switch in ``mode`` refuses every call of the tool: the gateway's rule
    (``agents.gateway.decisions``), which the kill switch page shows per mode."""
    if mode == "stop_all":
        return True
    if mode == "disable_writes":
        return rule.effect == "write"
    if mode == "disable_expensive":
        return rule.expensive
    return False


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

    def tools_stopped_by(self, mode: str) -> list[str]:
        """The allowed tools a kill-switch mode turns off, in the allowlist's order."""
        return [
            tool
            for tool in self.document["tools"]["allow"]
            if kill_switch_turns_off(mode, self.tool_rule(tool))
        ]

    def ceilings(self, agent_name: str) -> dict[str, Any]:
        """Global ceilings narrowed by the agent's own; None means no limit."""
        result = dict(self.document["budgets"])
        agent_rule = self.document["agents"].get(agent_name)
        if agent_rule:
            for key, value in agent_rule["budgets"].items():
                if value is not None:
                    result[key] = value if result[key] is None else min(result[key], value)
        return result

    def refusal_rule(self, agent_name: str) -> tuple[str, int]:
        """(on_refusal, max_refusals) for one agent: its own, else the global one. Versions
        published before refusals existed stop the run, as the gateway always did."""
        refusals = self.document.get("refusals") or {}
        agent_rule = self.document["agents"].get(agent_name) or {}
        action = agent_rule.get("on_refusal") or refusals.get("on_refusal") or "stop_run"
        limit = agent_rule.get("max_refusals")
        if limit is None:
            limit = refusals.get("max_refusals", 3)
        return action, limit

    @property
    def mcp_servers(self) -> dict[str, dict[str, Any]]:
        """The upstream MCP servers (name -> normalised config); {} before any was registered."""
        return (self.document.get("mcp") or {}).get("servers", {})

    def mcp_hold_seconds(self, client_name: str) -> float:
        """How long a tools/call waiting for approval is held open for this MCP client."""
        hold = (self.document.get("mcp") or {}).get("hold_seconds") or {}
        clients = hold.get("clients", {})
        if client_name in clients:
            return float(clients[client_name])
        if client_name in MCP_KNOWN_CLIENT_HOLD_SECONDS:
            return MCP_KNOWN_CLIENT_HOLD_SECONDS[client_name]
        return float(hold.get("default", MCP_DEFAULT_HOLD_SECONDS))

    def price_for(self, model: str) -> tuple[Decimal, Decimal] | None:
        """(input, output) USD per million tokens of ``model``: its own entry, else the longest
        entry its name starts with (``gpt-4o-mini`` prices ``gpt-4o-mini-2024-07-18``)."""
        prices = self.document.get("prices") or {}
        price = prices.get(model)
        if price is None and model:
            matches = [name for name in prices if model.startswith(name)]
            price = prices[max(matches, key=len)] if matches else None
        if price is None:
            return None
        return Decimal(str(price["input_per_million"])), Decimal(str(price["output_per_million"]))

    def mode_for(self, agent_name: str) -> str:
        """``enforce`` or ``observe`` (versions published before modes existed: enforce)."""
        return (self.document["agents"].get(agent_name) or {}).get("mode") or "enforce"

    @property
    def loop_max_repeats(self) -> int:
        return self.document["loop"]["max_repeats"]

    @property
    def mode_when_enabled(self) -> str:
        return self.document["kill_switch"]["mode_when_enabled"]


# --- tool schemas -------------------------------------------------------------------------------
# Arguments and outputs are validated by jsonschema-rs: offline (a "$ref" resolves only inside the
# schema; nothing is fetched from the network or the disk) and with the linear-time regex engine,
# so no "pattern" can make a decision backtrack for seconds (python-jsonschema uses ``re``: one
# pattern against 27 characters took 3.4 s). The policy's own format (POLICY_SCHEMA, ours) stays
# on python-jsonschema, whose messages name the field an editor got wrong.

SCHEMA_KEYWORDS_REFUSED = ("$id", "$dynamicRef", "$recursiveRef")


def schema_problems(schema: Any) -> list[str]:
    """Why a tool's argument or output schema cannot be used; empty when it can."""
    if not isinstance(schema, dict):
        return ["a JSON Schema is an object"]
    if _depth(schema) > MAX_DOCUMENT_DEPTH:
        return [f"nested deeper than {MAX_DOCUMENT_DEPTH} levels"]
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return [f"not a valid JSON Schema: {exc.message}"]
    problems = []
    for path, key, value in _keywords(schema):
        if key in SCHEMA_KEYWORDS_REFUSED:
            problems.append(f"{path or '(root)'}: {key} is not supported in a policy schema")
        elif key == "$ref" and isinstance(value, str) and not value.startswith("#"):
            problems.append(
                f"{path or '(root)'}: $ref {value!r} points outside the schema; only references "
                "inside it (#/$defs/...) are resolved, nothing is fetched"
            )
    if problems:
        return problems
    try:
        _compile(schema)
    except jsonschema_rs.ValidationError as exc:
        return [f"cannot be used: {str(exc).splitlines()[0]}"]
    return []


def schema_errors(schema: dict | None, value: Any) -> list[str]:
    """What is wrong with ``value`` against a tool's schema (at most 20 problems)."""
    if not schema:
        return []
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
    except jsonschema_rs.ValidationError as exc:
        # A policy saved before these checks: the call is refused, never a 500.
        return [f"(schema): the policy's schema cannot be used: {str(exc).splitlines()[0]}"]
    errors = []
    for error in validator.iter_errors(value):
        path = "/".join(str(part) for part in error.instance_path)
        message = error.message if len(error.message) <= 500 else error.message[:497] + "..."
        errors.append(f"{path or '(root)'}: {message}")
        if len(errors) == 20:
            break
    return errors


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> jsonschema_rs.Validator:
    return _compile(json.loads(schema_json))


def _compile(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    return jsonschema_rs.Draft202012Validator(
        schema, offline=True, pattern_options=jsonschema_rs.RegexOptions()
    )


def _keywords(schema: Any, path: str = "") -> list[tuple[str, str, Any]]:
    """Every (path, key, value) of the schema's objects, walked without recursion."""
    found, stack = [], [(schema, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                found.append((where, key, value))
                stack.append((value, f"{where}/{key}" if where else key))
        elif isinstance(item, list):
            stack.extend((value, f"{where}/{index}") for index, value in enumerate(item))
    return found


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


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
