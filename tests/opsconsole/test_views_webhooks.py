"""The webhooks page: admins add endpoints, switch them, and see and retry failed deliveries."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from opsconsole.models import AuditEntry, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db

URL = "/webhooks/"
GOOD = {
    "action": "create",
    "name": "ops-slack",
    "url": "https://hooks.example.com/x",
    "secret": "s" * 20,
    "format": "slack",
    "events": ["approval.requested", "kill_switch.changed"],
}


def test_an_admin_adds_an_endpoint(client, admin):
    client.force_login(admin.user)
    response = client.post(URL, GOOD)
    assert response.status_code == 302
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.name, endpoint.format, endpoint.events) == (
        "ops-slack",
        "slack",
        ["approval.requested", "kill_switch.changed"],
    )
    assert AuditEntry.objects.filter(action="webhook.create").count() == 1


@pytest.mark.parametrize(
    "change",
    [{"url": "not a url"}, {"secret": "short"}, {"events": ["made.up"]}, {"name": "two words"}],
)
def test_bad_endpoint_input_is_a_form_error_and_adds_nothing(client, admin, change):
    client.force_login(admin.user)
    response = client.post(URL, {**GOOD, **change})
    assert response.status_code == 422
    assert not WebhookEndpoint.objects.exists()


def test_failed_deliveries_are_visible_and_can_be_retried(client, admin):
    endpoint = WebhookEndpoint.objects.create(
        name="ops", url="http://127.0.0.1:9/x", secret="s" * 20
    )
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        event="kill_switch.changed",
        event_key="k",
        payload={},
        status="failed",
        attempts=8,
        last_error="ConnectError: refused",
        next_attempt_at=timezone.now(),
    )
    client.force_login(admin.user)
    page = client.get(URL).content.decode()
    assert "ConnectError: refused" in page
    assert 'name="action" value="retry"' in page

    assert client.post(URL, {"action": "retry", "delivery": delivery.pk}).status_code == 302
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)


def test_an_admin_disables_an_endpoint(client, admin):
    endpoint = WebhookEndpoint.objects.create(
        name="ops", url="https://example.com/x", secret="s" * 20
    )
    client.force_login(admin.user)
    client.post(URL, {"action": "disable", "endpoint": endpoint.pk})
    endpoint.refresh_from_db()
    assert endpoint.enabled is False


def test_only_admins_see_or_change_webhooks(client, reviewer, oncall, outsider):
    for person in (reviewer, oncall, outsider):
        client.force_login(person.user)
        assert client.get(URL).status_code == 403
        assert client.post(URL, GOOD).status_code == 403
    assert not WebhookEndpoint.objects.exists()
    client.logout()
    assert client.get(URL).status_code == 302
    assert reverse("webhooks") == URL


def test_wrong_method_is_405(client, admin):
    client.force_login(admin.user)
    assert client.delete(URL).status_code == 405
