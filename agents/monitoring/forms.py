"""Forms of the monitoring pages."""

from __future__ import annotations

from typing import Any

from django import forms

from agents.models import (
    Agent,
    BucketSize,
    DriftAction,
    DriftBaseline,
    DriftDirection,
    DriftMetric,
)
from agents.monitoring.rollups import SeriesKey

# How many buckets (hours or days) the charts span.
SPANS = [(24, "last 24"), (48, "last 48"), (90, "last 90"), (168, "last 168")]
# With no span chosen, the charts fit the data: from its first bucket (within the largest span)
# to now; with no data in the last DEFAULT_SPAN buckets, those are drawn.
DEFAULT_SPAN = 48
LARGEST_SPAN = max(span for span, _ in SPANS)


class DashboardForm(forms.Form):
    agent = forms.CharField(required=False, max_length=100)
    version = forms.CharField(required=False, max_length=100)
    compare_agent = forms.CharField(required=False, max_length=100)
    compare_version = forms.CharField(required=False, max_length=100)
    size = forms.ChoiceField(required=False, choices=BucketSize.choices)
    buckets = forms.TypedChoiceField(
        required=False,
        coerce=int,
        choices=[("", "fit the data"), *SPANS],
        empty_value=None,
    )

    def query(self) -> dict[str, Any]:
        data = getattr(self, "cleaned_data", {})
        size = data.get("size") or BucketSize.HOUR
        buckets = data.get("buckets")
        keys = [SeriesKey(data.get("agent") or "", data.get("version") or "")]
        if data.get("compare_agent") or data.get("compare_version"):
            keys.append(
                SeriesKey(
                    data.get("compare_agent") or data.get("agent") or "",
                    data.get("compare_version") or "",
                )
            )
        return {
            "keys": keys,
            "size": size,
            "buckets": buckets or DEFAULT_SPAN,
            "fit": not buckets,
            "reach": LARGEST_SPAN,
        }


class DriftRuleForm(forms.Form):
    name = forms.SlugField(max_length=100)
    metric = forms.ChoiceField(choices=DriftMetric.choices)
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.order_by("name"),
        to_field_name="name",
        required=False,
        empty_label="every agent",
    )
    agent_version = forms.CharField(required=False, max_length=100)
    size = forms.ChoiceField(choices=BucketSize.choices, initial=BucketSize.HOUR)
    baseline = forms.ChoiceField(choices=DriftBaseline.choices)
    baseline_version = forms.CharField(required=False, max_length=100)
    direction = forms.ChoiceField(choices=DriftDirection.choices)
    relative_threshold = forms.FloatField(required=False, min_value=0, initial=0.5)
    z_threshold = forms.FloatField(required=False, min_value=0, initial=3.0)
    min_samples = forms.IntegerField(min_value=1, initial=20)
    action = forms.ChoiceField(choices=DriftAction.choices)


class GoldenMarkForm(forms.Form):
    run_id = forms.IntegerField(min_value=1)
    note = forms.CharField(required=False, max_length=2000)


class DryRunForm(forms.Form):
    document = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false"}),
        help_text="A whole policy in YAML (export the current one from the policy page).",
    )
    limit = forms.IntegerField(min_value=1, max_value=5000, initial=1000)
