"""A running run's page refreshes live without wiping what the user is typing into its forms."""

from __future__ import annotations

from django.urls import reverse

from agents.models import Run, RunStatus
from opsconsole.models import AuditEntry
from tests.conftest import logged_in


def test_the_live_refreshed_header_does_not_hold_the_cancel_form(oncall, start_run):
    run = start_run()
    client = logged_in(oncall)
    url = reverse("runs:detail", args=[run["id"]])

    page = client.get(url).content.decode()
    # What static/js/live.js asks for on every run.updated: the header fragment, with htmx.
    refreshed = client.get(f"{url}?fragment=header", HTTP_HX_REQUEST="true")

    assert 'name="reason"' in page
    assert refreshed.status_code == 200
    fragment = refreshed.content.decode()
    assert fragment.lstrip().startswith('<section id="run-header"')
    assert 'name="reason"' not in fragment
    assert "Stop this run" not in fragment


def test_the_cancel_form_still_works_without_javascript_and_audits_the_reason(oncall, start_run):
    run = start_run()
    client = logged_in(oncall)

    response = client.post(
        reverse("runs:cancel", args=[run["id"]]), {"reason": "hammering browser.open"}
    )

    assert response.status_code == 302
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.stop_reason) == (RunStatus.STOPPED, "cancelled")
    assert AuditEntry.objects.get(action="run.cancel").reason == "hammering browser.open"
    assert 'name="reason"' not in client.get(response["Location"]).content.decode()


def test_stopping_with_htmx_records_the_reason_and_takes_the_form_away(oncall, start_run):
    run = start_run()

    response = logged_in(oncall).post(
        reverse("runs:cancel", args=[run["id"]]),
        {"reason": "vendor outage"},
        HTTP_HX_REQUEST="true",
    )

    assert response.status_code == 200
    assert AuditEntry.objects.get(action="run.cancel").reason == "vendor outage"
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="run-header"')
    # The form lives outside the header: the answer empties it out of band.
    assert 'id="run-cancel" hx-swap-oob="true"' in body
    assert 'name="reason"' not in body


def test_a_header_refresh_after_the_run_ended_takes_the_form_away(oncall, start_run, agent):
    run = start_run()
    client = logged_in(oncall)
    url = reverse("runs:detail", args=[run["id"]])
    agent.api.post_json(f"/api/v1/runs/{run['id']}/finish", {"status": "succeeded"})

    fragment = client.get(f"{url}?fragment=header", HTTP_HX_REQUEST="true").content.decode()

    assert 'id="run-cancel" hx-swap-oob="true"' in fragment
    assert 'name="reason"' not in fragment
