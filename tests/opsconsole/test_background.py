"""Background work: expiry, reaping, kill-switch sweeps, webhooks and retention (eager, in-process)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from agents.gateway import services
from agents.gateway.tasks import kill_switch_sweep, purge_traces, reap_runs
from agents.models import Run, ToolBreaker, ToolCall, TraceEvent
from agents.policy.services import kill_switch_set
from approvals.models import ApprovalRequest
from approvals.services import approval_expire, approvals_expire_due, approvals_notify_expiring
from approvals.tasks import expire_approvals
from opsconsole.models import AuditEntry, WebhookDelivery, WebhookEndpoint
from opsconsole.notifications import notify
from opsconsole.webhooks import signature, webhooks_deliver_due

pytestmark = pytest.mark.django_db

POLICY = """
tools:
  allow: ["kb.read", "email.send", "vendor.quote.get"]
  definitions:
    email.send: {effect: write, approval: {timeout_seconds: 30}}
    vendor.quote.get:
      breaker: {window: 10, min_calls: 2, failure_rate: 0.5, cooldown_seconds: 0, trial_calls: 1}
budgets: {max_tool_calls: 10, max_seconds: 60}
"""


@pytest.fixture
def world(agent, start_run, publish_policy):
    publish_policy(POLICY)
    return agent


def ask(agent, run_id, tool, args=None):
    return agent.api.post_json(
        f"/api/v1/runs/{run_id}/tool-calls", {"tool": tool, "args": args or {}}
    ).json()


# --- approval expiry --------------------------------------------------------------------------------


def test_the_sweep_expires_a_request_and_stops_its_run(world, start_run):
    run = start_run()
    pending = ask(world, run["id"], "email.send", {"to": "x"})
    ApprovalRequest.objects.filter(pk=pending["approval"]["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert expire_approvals.delay().get() == 1

    request = ApprovalRequest.objects.get(pk=pending["approval"]["id"])
    assert request.status == "expired"
    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason) == ("stopped", "approval_timeout:email.send")
    answer = world.api.get(f"/api/v1/tool-calls/{pending['id']}?wait=5").json()
    assert answer["stop_reason"] == "approval_timeout:email.send"


def test_the_sweep_leaves_requests_that_have_time_left(world, start_run):
    run = start_run()
    pending = ask(world, run["id"], "email.send", {"to": "x"})
    assert approvals_expire_due() == 0
    assert ApprovalRequest.objects.get(pk=pending["approval"]["id"]).status == "pending"


def test_expiring_twice_applies_once(world, start_run):
    """A worker killed after committing one expiry and rerun applies nothing twice."""
    run = start_run()
    pending = ask(world, run["id"], "email.send", {"to": "x"})
    request_id = pending["approval"]["id"]
    ApprovalRequest.objects.filter(pk=request_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert approval_expire(request_id=request_id) is True
    assert approval_expire(request_id=request_id) is False
    assert approvals_expire_due() == 0
    assert TraceEvent.objects.filter(run_id=run["id"], kind="stop").count() == 1


def test_a_sweep_that_dies_midway_loses_nothing_when_rerun(world, start_run, monkeypatch):
    runs = [start_run() for _ in range(3)]
    ids = [
        ask(world, r["id"], "email.send", {"to": str(i)})["approval"]["id"]
        for i, r in enumerate(runs)
    ]
    ApprovalRequest.objects.filter(pk__in=ids).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    import approvals.services as approval_services

    real = approval_services.approval_expire
    calls = {"n": 0}

    def dies_on_second(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit("worker killed")
        return real(**kwargs)

    monkeypatch.setattr(approval_services, "approval_expire", dies_on_second)
    with pytest.raises(SystemExit):
        approval_services.approvals_expire_due()
    monkeypatch.setattr(approval_services, "approval_expire", real)

    assert approval_services.approvals_expire_due() == 2
    assert set(ApprovalRequest.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        "expired"
    }
    for r in runs:
        assert TraceEvent.objects.filter(run_id=r["id"], kind="stop").count() == 1


# --- reaping ----------------------------------------------------------------------------------------


def test_a_silent_run_past_max_seconds_is_stopped_and_keeps_its_usage(world, start_run, settings):
    settings.OPSCONSOLE_REAP_GRACE_SECONDS = 5
    run = start_run(budgets={"max_seconds": 10})
    ask(world, run["id"], "kb.read", {"q": 1})
    world.api.post_json(f"/api/v1/runs/{run['id']}/steps", {"tokens_in": 50, "usd": "0.1"})
    lively = start_run(budgets={"max_seconds": 10})
    Run.objects.filter(pk=run["id"]).update(started_at=timezone.now() - timedelta(seconds=16))
    Run.objects.filter(pk=lively["id"]).update(started_at=timezone.now() - timedelta(seconds=12))

    assert reap_runs.delay().get() == 1

    db_run = Run.objects.get(pk=run["id"])
    assert (db_run.status, db_run.stop_reason) == ("stopped", "max_seconds")
    assert (db_run.tool_calls, db_run.steps, db_run.tokens) == (1, 1, 50)
    assert Run.objects.get(pk=lively["id"]).status == "running"  # within its grace


# --- circuit breaker ----------------------------------------------------------------------------------


def test_a_failed_trial_call_reopens_the_breaker(world, start_run):
    for i in range(2):
        run = start_run()
        allowed = ask(world, run["id"], "vendor.quote.get", {"n": i})
        world.api.post_json(
            f"/api/v1/tool-calls/{allowed['id']}/result", {"ok": False, "error": "503"}
        )
    assert ToolBreaker.objects.get(tool="vendor.quote.get").state == "open"
    run = start_run()
    trial = ask(world, run["id"], "vendor.quote.get", {"n": 9})  # cooldown 0: half-open trial
    assert trial["decision"] == "allow"
    world.api.post_json(
        f"/api/v1/tool-calls/{trial['id']}/result", {"ok": False, "error": "503 again"}
    )
    breaker = ToolBreaker.objects.get(tool="vendor.quote.get")
    assert breaker.state == "open"


# --- kill switch ----------------------------------------------------------------------------------------


def test_stop_all_stops_runs_and_cancels_pending_approvals(
    world, start_run, django_capture_on_commit_callbacks
):
    waiting = start_run()
    pending = ask(world, waiting["id"], "email.send", {"to": "x"})
    busy = start_run()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        kill_switch_set(mode="stop_all", reason="incident", actor="user:ada")
    assert any(
        getattr(cb, "__self__", None) is kill_switch_sweep or cb == kill_switch_sweep.delay
        for cb in callbacks
    )

    for run in (waiting, busy):
        db_run = Run.objects.get(pk=run["id"])
        assert (db_run.status, db_run.stop_reason) == ("stopped", "kill_switch")
    assert ApprovalRequest.objects.get(pk=pending["approval"]["id"]).status == "cancelled"
    assert (
        world.api.get(f"/api/v1/tool-calls/{pending['id']}").json()["stop_reason"] == "kill_switch"
    )


def test_turning_the_switch_off_starts_nothing(
    world, start_run, django_capture_on_commit_callbacks
):
    run = start_run()
    with django_capture_on_commit_callbacks(execute=True):
        kill_switch_set(mode="stop_all", reason="incident", actor="user:ada")
        kill_switch_set(mode="off", reason="", actor="user:ada")
    assert Run.objects.get(pk=run["id"]).stop_reason == "kill_switch"
    assert world.api.post_json("/api/v1/runs", {"task": "new"}).status_code == 201


# --- webhooks -------------------------------------------------------------------------------------------


class Receiver:
    """A local HTTP receiver that fails the first ``failures`` requests."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                failing = len(receiver.requests) <= receiver.failures
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver(settings):
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True  # the receiver listens on 127.0.0.1
    made = []

    def make(failures: int = 0) -> Receiver:
        r = Receiver(failures)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def endpoint(url: str, **extra) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        name=extra.pop("name", "ops"), url=url, secret="s3cret", **extra
    )


def test_a_receiver_that_fails_twice_then_succeeds_gets_exactly_one_delivery(receiver, settings):
    settings.OPSCONSOLE_WEBHOOK_BACKOFF_SECONDS = 0
    hook = receiver(failures=2)
    endpoint(hook.url)
    notify(event="kill_switch.changed", key="kill_switch:1", payload={"mode": "stop_all"})
    for _ in range(3):
        webhooks_deliver_due()

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 3, "")
    assert len(hook.requests) == 3
    assert {headers["X-Opsconsole-Delivery"] for headers, _ in hook.requests} == {str(delivery.pk)}
    assert webhooks_deliver_due() == 0  # nothing left to send
    assert len(hook.requests) == 3


def test_a_notice_is_signed_with_hmac(receiver):
    hook = receiver()
    endpoint(hook.url)
    notify(event="kill_switch.changed", key="k", payload={"mode": "off"})
    webhooks_deliver_due()
    headers, body = hook.requests[0]
    stamp, mac = (
        dict(part.split("=", 1) for part in headers["X-Opsconsole-Signature"].split(","))["t"],
        None,
    )
    expected = hmac.new(b"s3cret", f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    mac = headers["X-Opsconsole-Signature"].split("v1=")[1]
    assert hmac.compare_digest(mac, expected)
    assert signature("s3cret", int(stamp), body).endswith(expected)
    assert json.loads(body)["event"] == "kill_switch.changed"


def test_a_slack_endpoint_gets_a_text_body(receiver):
    hook = receiver()
    endpoint(hook.url, format="slack")
    notify(
        event="kill_switch.changed",
        key="k",
        payload={"mode": "stop_all", "set_by": "user:ada", "reason": "INC-1"},
    )
    webhooks_deliver_due()
    assert json.loads(hook.requests[0][1]) == {
        "text": "Kill switch is now stop_all (set by user:ada: INC-1)"
    }


def test_one_notice_per_event_however_often_it_is_noticed():
    endpoint("http://127.0.0.1:9/never")
    notify(event="approval.expiring", key="approval:1:expiring", payload={})
    notify(event="approval.expiring", key="approval:1:expiring", payload={})
    assert WebhookDelivery.objects.count() == 1


def test_an_endpoint_gets_only_the_events_it_asked_for():
    endpoint("http://127.0.0.1:9/a", name="a", events=["approval.requested"])
    notify(event="kill_switch.changed", key="k1", payload={})
    assert WebhookDelivery.objects.count() == 0


def test_a_receiver_that_never_answers_fails_visibly_after_the_last_attempt(settings):
    settings.OPSCONSOLE_WEBHOOK_BACKOFF_SECONDS = 0
    settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE = True  # a closed port on 127.0.0.1
    endpoint("http://127.0.0.1:9/closed-port")
    notify(event="kill_switch.changed", key="k", payload={})
    for _ in range(10):
        webhooks_deliver_due()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    assert delivery.attempts == 8
    assert "ConnectError" in delivery.last_error


def test_the_gateway_notices_approvals_kill_switch_and_budget_crossings(world, start_run):
    endpoint("http://127.0.0.1:9/x")
    run = start_run(budgets={"max_tool_calls": 5})
    for i in range(4):  # 4 of 5 = 80 %
        ask(world, run["id"], "kb.read", {"q": i})
    ask(world, run["id"], "email.send", {"to": "x"})  # 5 of 5, pending approval
    kill_switch_set(mode="disable_writes", reason="INC-2", actor="user:ada")

    events = list(WebhookDelivery.objects.order_by("id").values_list("event", "event_key"))
    assert ("budget.crossed_80", f"run:{run['id']}:max_tool_calls:80") in events
    assert (
        sum(1 for event, _ in events if event == "budget.crossed_80" and "max_tool_calls" in _) == 1
    )
    assert any(event == "approval.requested" for event, _ in events)
    assert any(event == "kill_switch.changed" for event, _ in events)


def test_approvals_about_to_expire_get_one_notice(world, start_run, settings):
    settings.OPSCONSOLE_APPROVAL_EXPIRING_SECONDS = 60
    endpoint("http://127.0.0.1:9/x", events=["approval.expiring"])
    run = start_run()
    ask(world, run["id"], "email.send", {"to": "x"})  # timeout 30 s: inside the window
    assert approvals_notify_expiring() == 1
    assert approvals_notify_expiring() == 0
    assert WebhookDelivery.objects.filter(event="approval.expiring").count() == 1


def test_a_broken_receiver_never_blocks_a_decision(world, start_run):
    endpoint("http://10.255.255.1/blackhole")
    run = start_run()
    answer = ask(world, run["id"], "email.send", {"to": "x"})
    assert answer["decision"] == "pending_approval"
    assert WebhookDelivery.objects.get().status == "pending"  # sent later, not during the decision


# --- retention ------------------------------------------------------------------------------------------


def test_retention_purges_old_trace_payloads_but_keeps_runs_and_audit(world, start_run, settings):
    settings.OPSCONSOLE_RETENTION_DAYS = 30
    old = start_run()
    allowed = ask(world, old["id"], "kb.read", {"q": "secret"})
    world.api.post_json(
        f"/api/v1/tool-calls/{allowed['id']}/result", {"ok": True, "output": {"text": "x"}}
    )
    world.api.post_json(f"/api/v1/runs/{old['id']}/finish", {"status": "succeeded"})
    Run.objects.filter(pk=old["id"]).update(ended_at=timezone.now() - timedelta(days=31))
    recent = start_run()
    ask(world, recent["id"], "kb.read", {"q": 1})
    audit_rows = AuditEntry.objects.count()

    assert purge_traces.delay().get() > 0

    assert TraceEvent.objects.filter(run_id=old["id"]).count() == 0
    assert TraceEvent.objects.filter(run_id=recent["id"]).count() > 0
    assert Run.objects.get(pk=old["id"]).stop_reason == "ok"
    tool_call = ToolCall.objects.get(pk=allowed["id"])
    assert (tool_call.args, tool_call.output, tool_call.decision) == ({}, None, "allow")
    assert AuditEntry.objects.count() == audit_rows


def test_tasks_have_explicit_names():
    from opsconsole.celery import app

    app.loader.import_default_modules()
    for name in [
        "approvals.expire_due",
        "runs.reap_silent",
        "killswitch.sweep",
        "traces.purge",
        "webhooks.deliver",
        "webhooks.deliver_due",
        "approvals.notify_expiring",
    ]:
        assert name in app.tasks, name


def test_agent_services_stop_a_run_once():
    assert services.run_stop(run_id=999999, reason="cancelled") is False


def test_a_run_waiting_for_approval_is_not_reaped_its_request_expires_instead(
    world, start_run, settings
):
    settings.OPSCONSOLE_REAP_GRACE_SECONDS = 0
    run = start_run(budgets={"max_seconds": 10})
    pending = ask(world, run["id"], "email.send", {"to": "x"})  # approval timeout 30 s > 10 s
    Run.objects.filter(pk=run["id"]).update(started_at=timezone.now() - timedelta(seconds=20))
    assert reap_runs.delay().get() == 0
    assert Run.objects.get(pk=run["id"]).status == "waiting_approval"

    ApprovalRequest.objects.filter(pk=pending["approval"]["id"]).update(expires_at=timezone.now())
    expire_approvals.delay().get()
    assert Run.objects.get(pk=run["id"]).stop_reason == "approval_timeout:email.send"
