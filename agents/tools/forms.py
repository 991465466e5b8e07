"""The degrade form of the tool page."""

from __future__ import annotations

from django import forms

from agents.tools.services import DEGRADE_MINUTES


class DegradeForm(forms.Form):
    minutes = forms.TypedChoiceField(
        choices=[(m, f"{m} minutes") for m in DEGRADE_MINUTES], coerce=int, initial=15
    )
    reason = forms.CharField(
        max_length=2000,
        widget=forms.TextInput(attrs={"placeholder": "why (sent to webhooks, kept in the audit)"}),
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


class LiftForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False)
