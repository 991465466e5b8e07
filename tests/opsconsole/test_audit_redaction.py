"""Webhook URLs are credentials (a Slack-style receiver needs nothing else): the audit log shows
them whole to admins only; everyone else sees where they point, scheme://host/…"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from opsconsole.audit import audit_record
from opsconsole.models import AuditEntry

pytestmark = pytest.mark.django_db

SECRET_PATH = "services/T0001/B0002/Xy9SecretToken42"
ENDPOINT = {
    "action": "create",
    "name": "ops-slack",
    "url": f"https://hooks.slack.example/{SECRET_PATH}?token=abc123",
    "secret": "s" * 20,
    "format": "slack",
}


def logged_in(person) -> Client:
    client = Client()
    client.force_login(person.user)
    return client


@pytest.fixture
def endpoint_added(admin):
    response = logged_in(admin).post(reverse("webhooks"), ENDPOINT)
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action="webhook.create")
    assert entry.after["url"] == ENDPOINT["url"]
    return entry


@pytest.mark.parametrize("persona", ["oncall", "reviewer"])
def test_people_who_are_not_admins_see_only_scheme_and_host(request, persona, endpoint_added):
    response = logged_in(request.getfixturevalue(persona)).get(reverse("audit"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "webhook.create" in page and "ops-slack" in page
    assert "https://hooks.slack.example/…" in page
    assert SECRET_PATH not in page and "Xy9SecretToken42" not in page and "abc123" not in page
    endpoint_added.refresh_from_db()
    assert endpoint_added.after["url"] == ENDPOINT["url"]  # the record itself is untouched


def test_an_admin_sees_the_whole_url(admin, endpoint_added):
    response = logged_in(admin).get(reverse("audit"))

    assert response.status_code == 200
    assert SECRET_PATH in response.content.decode()


def test_credentials_in_any_url_of_any_entry_are_hidden_from_non_admins(oncall):
    audit_record(
        actor="user:ada-admin",
        action="webhook.update",
        target_type="webhook",
        target_id="pager",
        reason="moved to https://user:hunter2@pager.example:8443/v2/hook?key=zzz",
        before={"url": "http://pager.example/old-Secret-Path"},
        after={"endpoint": {"target": "https://pager.example:8443/v2/Secret-Path-2"}},
    )

    page = logged_in(oncall).get(reverse("audit")).content.decode()

    for secret in ("hunter2", "old-Secret-Path", "Secret-Path-2", "key=zzz", "/v2/hook"):
        assert secret not in page, secret
    assert "https://pager.example:8443/…" in page
    assert "http://pager.example/…" in page
