"""The reviewer's decision form."""

from __future__ import annotations

from typing import Any

from django import forms

from approvals.models import ApprovalStatus, Verdict


class DecisionForm(forms.Form):
    verdict = forms.ChoiceField(choices=Verdict.choices)
    comment = forms.CharField(
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "comment (required to reject)"}),
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        data["comment"] = (data.get("comment") or "").strip()
        if data.get("verdict") == Verdict.REJECT and not data["comment"]:
            self.add_error("comment", "A comment is required to reject.")
        return data


class HistoryFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False,
        choices=[("", "any outcome")]
        + [(value, label) for value, label in ApprovalStatus.choices if value != "pending"],
    )
