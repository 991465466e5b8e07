"""Forms of the policy editor (YAML, one tool, budgets, restore) and of the kill switch."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from agents.models import KillSwitchMode
from agents.policy.document import (
    BUDGET_NAMES,
    MAX_DOCUMENT_DEPTH,
    MAX_TOOL_NAME,
    PolicyError,
    normalise,
    parse_yaml,
    schema_problems,
)


class _ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=2000,
        widget=forms.TextInput(attrs={"placeholder": "why (kept with the version)"}),
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason and self.fields["reason"].required:
            raise forms.ValidationError("A reason is required.")
        return reason


def _document_errors(document: dict[str, Any]) -> list[str]:
    try:
        normalise(document)
    except PolicyError as error:
        return error.errors
    return []


class PolicyYamlForm(_ReasonForm):
    """The whole policy as YAML: parsed and validated with ``normalise`` before any save."""

    yaml = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 30, "spellcheck": "false", "class": "code"})
    )
    file = forms.FileField(required=False, help_text="or upload a .yaml file")
    field_order = ["yaml", "file", "reason"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Either the textarea or an uploaded file.
        self.fields["yaml"].required = False

    def clean(self):
        data = super().clean()
        upload = data.get("file")
        text = data.get("yaml") or ""
        if upload:
            if upload.size > 1_000_000:
                self.add_error("file", "The file is larger than 1 MB.")
                return data
            try:
                text = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                self.add_error("file", "The file is not UTF-8 text.")
                return data
        if not text.strip():
            self.add_error("yaml", "Paste a policy or upload a file.")
            return data
        try:
            document = parse_yaml(text)
            data["document"] = normalise(document)
        except PolicyError as error:
            for message in error.errors:
                self.add_error("yaml", message)
        return data


def _json_field(label: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "class": "code"}),
        help_text="a JSON Schema (draft 2020-12); empty for none",
    )


class ToolForm(_ReasonForm):
    """One tool's rule; saving publishes a new version of the whole policy."""

    name = forms.RegexField(
        regex=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length=MAX_TOOL_NAME
    )
    allowed = forms.BooleanField(required=False, label="enabled (on the global allowlist)")
    description = forms.CharField(required=False, max_length=500)
    effect = forms.ChoiceField(choices=[("read", "read"), ("write", "write")])
    expensive = forms.BooleanField(required=False)
    cost_usd = forms.DecimalField(min_value=0, max_digits=12, decimal_places=6, initial=0)
    max_calls_per_run = forms.IntegerField(required=False, min_value=1, label="per-run cap")
    max_output_bytes = forms.IntegerField(min_value=1, initial=65536)
    approval_required = forms.ChoiceField(
        choices=[("", "default (writes need approval)"), ("yes", "always"), ("no", "never")],
        required=False,
    )
    reviewers = forms.IntegerField(min_value=1, max_value=5, initial=1)
    timeout_seconds = forms.IntegerField(min_value=1, initial=900)
    args_schema = _json_field("argument schema")
    output_schema = _json_field("output schema")
    field_order = [
        "name",
        "allowed",
        "description",
        "effect",
        "expensive",
        "cost_usd",
        "max_calls_per_run",
        "max_output_bytes",
        "approval_required",
        "reviewers",
        "timeout_seconds",
        "args_schema",
        "output_schema",
        "reason",
    ]

    def __init__(self, *args, current: dict[str, Any], **kwargs):
        super().__init__(*args, **kwargs)
        self.current = current

    @classmethod
    def initial_for(cls, document: dict[str, Any], name: str) -> dict[str, Any]:
        definition = document["tools"]["definitions"].get(name)
        if definition is None:
            return {"name": name, "allowed": name in document["tools"]["allow"]}
        required = definition["approval"]["required"]
        return {
            "name": name,
            "allowed": name in document["tools"]["allow"],
            "description": definition["description"],
            "effect": definition["effect"],
            "expensive": definition["expensive"],
            "cost_usd": definition["cost_usd"],
            "max_calls_per_run": definition["max_calls_per_run"],
            "max_output_bytes": definition["max_output_bytes"],
            "approval_required": "" if required is None else ("yes" if required else "no"),
            "reviewers": definition["approval"]["reviewers"],
            "timeout_seconds": definition["approval"]["timeout_seconds"],
            "args_schema": _pretty(definition["args_schema"]),
            "output_schema": _pretty(definition["output_schema"]),
        }

    def _clean_schema(self, key: str) -> dict | None:
        text = self.cleaned_data[key].strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(f"Not valid JSON: {error}") from None
        except RecursionError:
            raise forms.ValidationError(
                f"Nested deeper than {MAX_DOCUMENT_DEPTH} levels."
            ) from None
        problems = schema_problems(value)
        if problems:
            raise forms.ValidationError(problems)
        return value

    def clean_args_schema(self) -> dict | None:
        return self._clean_schema("args_schema")

    def clean_output_schema(self) -> dict | None:
        return self._clean_schema("output_schema")

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        document = json.loads(json.dumps(self.current))
        name = data["name"]
        required = {"": None, "yes": True, "no": False}[data.get("approval_required") or ""]
        document["tools"]["definitions"][name] = {
            "description": data.get("description", ""),
            "effect": data["effect"],
            "expensive": data["expensive"],
            "cost_usd": float(data["cost_usd"]),
            "max_calls_per_run": data.get("max_calls_per_run"),
            "args_schema": data.get("args_schema"),
            "output_schema": data.get("output_schema"),
            "max_output_bytes": data["max_output_bytes"],
            "approval": {
                "required": required,
                "reviewers": data["reviewers"],
                "timeout_seconds": data["timeout_seconds"],
            },
            "breaker": document["tools"]["definitions"].get(name, {}).get("breaker")
            or dict(document["breaker"]),
        }
        allow = set(document["tools"]["allow"])
        if data["allowed"]:
            allow.add(name)
        else:
            allow.discard(name)
        document["tools"]["allow"] = sorted(allow)
        errors = _document_errors(document)
        for message in errors:
            self.add_error(None, message)
        data["document"] = document
        return data


class BudgetsForm(_ReasonForm):
    """Budget ceilings, global or for one agent (with its own allowlist)."""

    agent = forms.CharField(required=False, widget=forms.HiddenInput)
    allow = forms.CharField(
        required=False,
        label="allowlist",
        help_text="comma-separated tools, narrowing the global allowlist; empty: all of them",
    )
    max_steps = forms.IntegerField(required=False, min_value=0)
    max_seconds = forms.IntegerField(required=False, min_value=0)
    max_tool_calls = forms.IntegerField(required=False, min_value=0)
    max_usd = forms.DecimalField(required=False, min_value=0, max_digits=12, decimal_places=6)
    max_tokens = forms.IntegerField(required=False, min_value=0)

    def __init__(self, *args, current: dict[str, Any], **kwargs):
        super().__init__(*args, **kwargs)
        self.current = current

    @classmethod
    def initial_for(cls, document: dict[str, Any], agent: str = "") -> dict[str, Any]:
        if agent:
            rule = document["agents"].get(agent) or {"allow": None, "budgets": {}}
            budgets = rule["budgets"]
            allow = ", ".join(rule["allow"]) if rule["allow"] is not None else ""
        else:
            budgets, allow = document["budgets"], ""
        return {"agent": agent, "allow": allow, **{k: budgets.get(k) for k in BUDGET_NAMES}}

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        document = json.loads(json.dumps(self.current))
        budgets = {
            name: (float(data[name]) if name == "max_usd" else data[name])
            if data.get(name) is not None
            else None
            for name in BUDGET_NAMES
        }
        agent = data.get("agent") or ""
        if agent:
            tools = sorted({t.strip() for t in (data.get("allow") or "").split(",") if t.strip()})
            document["agents"][agent] = {
                **document["agents"].get(agent, {}),
                "allow": tools or None,
                "budgets": budgets,
            }
        else:
            document["budgets"] = budgets
        for message in _document_errors(document):
            self.add_error(None, message)
        data["document"] = document
        return data


class PolicyRestoreForm(_ReasonForm):
    pass


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) if value else ""


class KillSwitchForm(forms.Form):
    """Step one proposes a change; step two (``confirmed``) carries it out."""

    mode = forms.ChoiceField(choices=KillSwitchMode.choices)
    reason = forms.CharField(
        max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    confirmed = forms.BooleanField(required=False, widget=forms.HiddenInput)
    # The mode the person saw when confirming; if someone else changed it since, ask again.
    from_mode = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        reason = (data.get("reason") or "").strip()
        data["reason"] = reason
        if not reason:
            self.add_error(
                "reason",
                "Say why: the reason is shown on every page and kept in the audit log.",
            )
        return data
