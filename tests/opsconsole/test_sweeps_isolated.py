"""The embedded scheduler's sweeps do not depend on each other, nor on webhook receivers.

A sweep that raises is logged and the others still run, on this tick and the next. A receiver
that trickles its answer one byte per second is given up at the delivery's total deadline, and
while it holds a delivery, approval expiry and the reaper keep running on their own thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from agents.gateway import services as gateway_services
from opsconsole import scheduler
from opsconsole.models import SweepHeartbeat, WebhookDelivery, WebhookEndpoint
from opsconsole.notifications import notify
from opsconsole.webhooks import webhook_deliver

DEADLINE_SECONDS = 2
# How long the trickling receiver keeps a connection going: far past the deadline, so a delivery
# that waits for it to finish is obvious, but bounded, so a failing test still ends.
TRICKLE_SECONDS = 20


class TricklingReceiver:
    """A receiver that answers one byte per second: its status line and headers (``headers``),
    or complete headers and then its body (``body``)."""

    def __init__(self, part: str):
        self.part = part
        self.requested = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            self.requested.set()
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
            if self.part == "body":
                connection.sendall(head)
            trickle = head if self.part == "headers" else b"x" * 100
            try:
                for byte in trickle[:TRICKLE_SECONDS]:
                    if self.closing.wait(1):
                        return
                    connection.sendall(bytes([byte]))
            except OSError:
                return  # the sender gave up

    def close(self) -> None:
        self.closing.set()
        self.listener.close()


@pytest.fixture
def trickling():
    made: list[TricklingReceiver] = []

    def make(part: str = "headers") -> TricklingReceiver:
        receiver = TricklingReceiver(part)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def short_deadline(settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1
    settings.OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS = DEADLINE_SECONDS


def queue_notice(url: str) -> WebhookDelivery:
    WebhookEndpoint.objects.create(name="slow", url=url, secret="s" * 20)
    notify(event="kill_switch.changed", key="kill_switch:1", payload={"mode": "off"})
    return WebhookDelivery.objects.get()


# --- one failing sweep ---------------------------------------------------------------------------


def fail(**kwargs):
    raise RuntimeError("boom")


def test_a_failing_sweep_is_logged_and_every_other_sweep_still_runs(db, monkeypatch, caplog):
    monkeypatch.setattr(scheduler, "_last_run", {})  # the hourly and per-minute sweeps are due
    monkeypatch.setattr(gateway_services, "runs_reap_silent", fail)
    # Importing the apps' tasks sets Django's logging up again, which would drop caplog's handler.
    scheduler._task("runs.reap_silent")

    with caplog.at_level(logging.ERROR, logger="opsconsole.scheduler"):
        done = scheduler.run_due_sweeps()

    assert "reaped" not in done
    assert {"expired", "expiring_notices", "webhooks", "purged", "rollups"} <= set(done)
    beat_tasks = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    recorded = set(SweepHeartbeat.objects.values_list("name", flat=True))
    assert recorded == beat_tasks - {"runs.reap_silent"}
    assert any("runs.reap_silent" in record.getMessage() for record in caplog.records)
    assert any(record.exc_info for record in caplog.records)


def test_the_same_failing_sweep_is_tried_again_on_the_next_tick(db, monkeypatch):
    calls = []

    def fail_and_count(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway_services, "runs_reap_silent", fail_and_count)
    scheduler.run_due_sweeps()
    SweepHeartbeat.objects.all().delete()
    scheduler.run_due_sweeps()

    assert len(calls) == 2
    assert SweepHeartbeat.objects.filter(name="approvals.expire_due").exists()


# --- a trickling receiver ------------------------------------------------------------------------


def test_a_receiver_trickling_its_headers_is_given_up_at_the_total_deadline(
    db, trickling, short_deadline
):
    receiver = trickling("headers")
    delivery = queue_notice(receiver.url)

    started = time.monotonic()
    status = webhook_deliver(delivery_id=delivery.pk)
    elapsed = time.monotonic() - started

    assert elapsed < DEADLINE_SECONDS + 1.5
    assert receiver.requested.is_set()
    delivery.refresh_from_db()
    assert (status, delivery.status, delivery.attempts) == ("pending", "pending", 1)
    assert f"no complete answer within {DEADLINE_SECONDS} s" in delivery.last_error


def test_a_receiver_trickling_its_body_holds_nothing_once_its_status_is_in(
    db, trickling, short_deadline
):
    receiver = trickling("body")
    delivery = queue_notice(receiver.url)

    started = time.monotonic()
    status = webhook_deliver(delivery_id=delivery.pk)

    assert time.monotonic() - started < DEADLINE_SECONDS + 1.5
    delivery.refresh_from_db()
    assert (status, delivery.status, delivery.last_error) == ("delivered", "delivered", "")


@pytest.mark.django_db(transaction=True)
def test_a_trickling_receiver_never_holds_approval_expiry_or_the_reaper(trickling, settings):
    settings.OPSCONSOLE_EMBEDDED_SCHEDULER = True  # deliveries wait for the sweep (with Redis too)
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True
    settings.OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS = 6  # longer than this test waits for the others
    receiver = trickling("headers")
    delivery = queue_notice(receiver.url)

    scheduler.start(interval=0.2)
    try:
        assert receiver.requested.wait(5), "the webhook sweep never sent the delivery"
        holding_since = timezone.now()
        deadline = time.monotonic() + 3
        moved: set[str] = set()
        while time.monotonic() < deadline and moved != {"approvals.expire_due", "runs.reap_silent"}:
            time.sleep(0.1)
            moved = set(
                SweepHeartbeat.objects.filter(last_ok_at__gt=holding_since).values_list(
                    "name", flat=True
                )
            ) & {"approvals.expire_due", "runs.reap_silent"}
        delivery.refresh_from_db()
        still_sending = delivery.status == "sending"
    finally:
        scheduler.stop()

    assert still_sending, "the delivery was meant to be still held by the receiver"
    assert moved == {"approvals.expire_due", "runs.reap_silent"}
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert "no complete answer within 6 s" in delivery.last_error
