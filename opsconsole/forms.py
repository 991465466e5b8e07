"""Forms of the cross-cutting pages: the kill switch and the audit log filters."""

from __future__ import annotations

from django import forms

from opsconsole.notifications import EVENTS
from opsconsole.webhooks import destination_refusal


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=64)
    actor = forms.CharField(required=False, max_length=200)
    target_type = forms.CharField(required=False, max_length=64)
    target_id = forms.CharField(required=False, max_length=64)
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)


class WebhookEndpointForm(forms.Form):
    name = forms.SlugField(max_length=100)
    url = forms.URLField(max_length=500, assume_scheme="https")
    secret = forms.CharField(
        max_length=200, min_length=16, help_text="at least 16 characters; signs every request"
    )
    format = forms.ChoiceField(choices=[("generic", "Generic JSON"), ("slack", "Slack-compatible")])
    events = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="none checked: every event",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["events"].choices = [(event, event) for event in EVENTS]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if refusal := destination_refusal(url):
            raise forms.ValidationError(refusal, code="destination_refused")
        return url
