"""Forms of the runs, agents and policy pages. Validation of policy documents is the policy
module's (``agents.policy.normalise``); these forms only turn its errors into form errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.utils import timezone

from agents import stop_reasons
from agents.models import RunSource, RunStatus

RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}


class RunFilterForm(forms.Form):
    agent = forms.CharField(required=False, max_length=100)
    status = forms.ChoiceField(required=False, choices=[("", "any status"), *RunStatus.choices])
    stop_reason = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"list": "stop-reasons", "placeholder": "any stop reason"}),
    )
    range = forms.ChoiceField(
        required=False,
        choices=[("", "any time"), ("1h", "last hour"), ("24h", "last day"), ("7d", "last week")],
    )
    since = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    q = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "search tasks"}),
    )
    tool = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "any tool, e.g. browser.open"}),
    )
    sort = forms.ChoiceField(
        required=False,
        choices=[("", "newest first"), ("cost", "most expensive first")],
    )
    # Observed runs come from OTLP traces (agents/telemetry); the gateway's were decided by it.
    source = forms.ChoiceField(
        required=False,
        choices=[
            ("", "any source"),
            (RunSource.OTLP, "observed (OTLP)"),
            (RunSource.GATEWAY, "gateway"),
        ],
    )

    def clean_stop_reason(self) -> str:
        value = self.cleaned_data["stop_reason"].strip()
        if value and stop_reasons.kind_of(value) not in stop_reasons.ALL_KINDS:
            raise forms.ValidationError(
                f"Not a stop reason. One of: {', '.join(stop_reasons.ALL_KINDS)}."
            )
        return value

    def clean(self):
        data = super().clean()
        preset = data.get("range")
        if preset and not data.get("since"):
            data["since"] = timezone.now() - RANGES[preset]
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            self.add_error("until", "The end must come after the start.")
        return data

    def selector_filters(self) -> dict[str, Any]:
        """The valid filters as ``run_page`` keyword arguments (invalid ones are dropped)."""
        data = getattr(self, "cleaned_data", {})
        return {
            "agent": data.get("agent") or None,
            "status": data.get("status") or None,
            "stop_reason": data.get("stop_reason") or None,
            "since": data.get("since"),
            "until": data.get("until"),
            "search": (data.get("q") or "").strip() or None,
            "tool": (data.get("tool") or "").strip() or None,
            "sort": data.get("sort") or "newest",
            "source": data.get("source") or None,
        }


class CancelRunForm(forms.Form):
    reason = forms.CharField(required=False, max_length=2000)


# --- agents -----------------------------------------------------------------------------------


# --- policy -----------------------------------------------------------------------------------
