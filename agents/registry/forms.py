"""Forms of the agents pages."""

from __future__ import annotations

from django import forms


class AgentCreateForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="letters, digits, - and _")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    tools = forms.CharField(
        required=False,
        help_text="its own allowlist, comma-separated; empty: every globally allowed tool",
    )

    def clean_tools(self) -> list[str]:
        return sorted({t.strip() for t in self.cleaned_data["tools"].split(",") if t.strip()})


class KeyIssueForm(forms.Form):
    label = forms.CharField(required=False, max_length=100)


class AgentEnableForm(forms.Form):
    enabled = forms.TypedChoiceField(
        choices=[("1", "enable"), ("0", "disable")], coerce=lambda v: v == "1"
    )
    reason = forms.CharField(required=False, max_length=2000)

    def clean(self):
        data = super().clean()
        if data.get("enabled") is False and not (data.get("reason") or "").strip():
            self.add_error("reason", "Say why the agent is disabled; its runs will stop.")
        return data


class AgentModeForm(forms.Form):
    mode = forms.ChoiceField(choices=[("enforce", "enforce"), ("observe", "observe")])
    reason = forms.CharField(required=False, max_length=2000)

    def clean(self):
        data = super().clean()
        if data.get("mode") == "observe" and not (data.get("reason") or "").strip():
            self.add_error(
                "reason", "Say why the agent is observed: its calls are allowed whatever happens."
            )
        return data


class AgentPauseForm(forms.Form):
    reason = forms.CharField(
        max_length=2000,
        error_messages={"required": "Say why the agent is paused; its runs will stop."},
    )
