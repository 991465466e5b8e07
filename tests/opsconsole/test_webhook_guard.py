"""Webhook destinations: no loopback, link-local (cloud metadata) or unspecified addresses, and no
private ones unless OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE says so.

Checked when an admin saves an endpoint (a form error, or the service's Invalid error) and again
when a delivery is sent, on every address the name resolves to; the request then goes to the
address that was checked (a second lookup could answer differently), and redirects are not
followed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from opsconsole.errors import Invalid
from opsconsole.models import AuditEntry, WebhookDelivery, WebhookEndpoint
from opsconsole.notifications import notify
from opsconsole.services import webhook_endpoint_create
from opsconsole.webhooks import webhooks_deliver_due

pytestmark = pytest.mark.django_db

URL = "/webhooks/"
FORM = {"action": "create", "name": "ops", "secret": "s" * 20, "format": "generic"}

ALWAYS_REFUSED = [
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
    "http://[fe80::1]/hook",
    "http://0.0.0.0:8080/hook",
    "http://[::]/hook",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",  # AWS's metadata service over IPv6
]
PRIVATE = [
    "http://127.0.0.1:8080/hook",
    "http://localhost:8080/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://10.0.0.5/hook",
    "http://192.168.1.10/hook",
    "https://172.16.0.1/hook",
]


class Receiver:
    """A local receiver answering every POST with ``status`` (and ``location``, if given)."""

    def __init__(self, status: int = 200, location: str = ""):
        self.requests: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(dict(self.headers))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**options) -> Receiver:
        made.append(Receiver(**options))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture
def resolver(monkeypatch):
    """Make names resolve to the given addresses (DNS is the outside world)."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return [
                (
                    socket.AF_INET6 if ":" in address else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (address, port or 0),
                )
                for address in answers[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def queue_notice(url: str) -> WebhookDelivery:
    # Straight into the table, as an endpoint saved while private destinations were allowed.
    WebhookEndpoint.objects.create(name="hook", url=url, secret="s" * 20)
    notify(event="kill_switch.changed", key="kill_switch:1", payload={"mode": "off"})
    return WebhookDelivery.objects.get()


# --- when an admin saves an endpoint -------------------------------------------------------------


@pytest.mark.parametrize("url", ALWAYS_REFUSED + PRIVATE)
def test_an_admin_cannot_add_an_internal_destination(client, admin, settings, url):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = False
    client.force_login(admin.user)

    response = client.post(URL, {**FORM, "url": url})

    assert response.status_code == 422
    assert "not allowed" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()
    assert not AuditEntry.objects.filter(action="webhook.create").exists()


@pytest.mark.parametrize("url", PRIVATE)
def test_private_destinations_can_be_allowed(client, admin, settings, url):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True
    client.force_login(admin.user)

    response = client.post(URL, {**FORM, "url": url})

    assert response.status_code == 302
    assert WebhookEndpoint.objects.get().url == url


@pytest.mark.parametrize("url", ALWAYS_REFUSED)
def test_link_local_and_unspecified_destinations_are_refused_even_when_private_ones_are_allowed(
    client, admin, settings, url
):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True
    client.force_login(admin.user)

    assert client.post(URL, {**FORM, "url": url}).status_code == 422
    assert not WebhookEndpoint.objects.exists()


def test_the_service_refuses_an_internal_destination_whoever_calls_it(settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = False
    for url in ["http://127.1/hook", "http://2130706433/hook", "http://169.254.169.254/"]:
        with pytest.raises(Invalid) as refused:
            webhook_endpoint_create(
                name="ops", url=url, secret="s" * 20, format="generic", events=[], actor="t"
            )
        assert refused.value.code == "destination_refused"
    assert not WebhookEndpoint.objects.exists()


def test_a_public_destination_is_saved(client, admin, settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = False
    client.force_login(admin.user)

    response = client.post(URL, {**FORM, "url": "https://hooks.example.com/services/x"})

    assert response.status_code == 302
    assert WebhookEndpoint.objects.filter(name="ops").exists()


# --- when a delivery is sent ---------------------------------------------------------------------


def test_a_delivery_to_a_loopback_receiver_is_refused_and_nothing_is_sent(receiver, settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = False
    hook = receiver()
    queue_notice(hook.url)

    webhooks_deliver_due()

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"  # for good: a retry would be refused the same way
    assert "127.0.0.1" in delivery.last_error and "loopback" in delivery.last_error
    assert hook.requests == []


def test_a_name_that_resolves_to_loopback_is_refused(receiver, settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = False
    hook = receiver()
    queue_notice(f"http://localhost:{hook.port}/hook")

    webhooks_deliver_due()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, hook.requests) == ("failed", [])
    assert "loopback" in delivery.last_error


def test_every_resolved_address_is_checked(receiver, resolver, settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = False
    resolver["hooks.example.test"] = ["93.184.215.14", "169.254.169.254"]
    queue_notice("http://hooks.example.test/hook")

    webhooks_deliver_due()

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    assert "169.254.169.254" in delivery.last_error and "link-local" in delivery.last_error


def test_the_metadata_address_is_refused_even_when_private_destinations_are_allowed(
    resolver, settings
):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True
    resolver["metadata.example.test"] = ["169.254.169.254"]
    queue_notice("http://metadata.example.test/latest/meta-data/")

    webhooks_deliver_due()

    assert "link-local" in WebhookDelivery.objects.get().last_error


def test_the_request_goes_to_the_address_that_was_checked(receiver, monkeypatch, settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True
    hook = receiver()
    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        """The first answer passes the check; a second lookup would reach the metadata service."""
        if host != "hooks.example.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    queue_notice(f"http://hooks.example.test:{hook.port}/hook")

    webhooks_deliver_due()

    assert WebhookDelivery.objects.get().status == "delivered"
    assert lookups == ["hooks.example.test"]
    assert [headers["Host"] for headers in hook.requests] == [f"hooks.example.test:{hook.port}"]


def test_a_redirect_is_not_followed(receiver, settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True
    target = receiver()
    hook = receiver(status=307, location=target.url)
    queue_notice(hook.url)

    webhooks_deliver_due()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_error) == ("pending", "HTTP 307")
    assert (len(hook.requests), target.requests) == (1, [])


# --- the setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, "False"), ("true", "True"), ("0", "False")])
def test_private_destinations_are_refused_unless_the_environment_allows_them(
    tmp_path, value, expected
):
    env = {k: v for k, v in os.environ.items() if k != "OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE"}
    env.update(DJANGO_SETTINGS_MODULE="opsconsole.settings", OPSCONSOLE_DATA_DIR=str(tmp_path))
    if value is not None:
        env["OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE"] = value
    script = "import django; django.setup(); from django.conf import settings; print(settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE)"
    finished = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == expected
