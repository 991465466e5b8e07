"""Background-work health: sweep heartbeats, GET /status/ and the console's notice.

The last test is the real thing: a Celery worker with beat against a private redis-server (on a
free port, never the shared one) and the test database. Redis is stopped: the status endpoint
reports background work behind and the channel layer unreachable, while gateway decisions still
answer. Redis comes back on the same port: the worker resumes by itself and the status clears.
"""

from __future__ import annotations

import socket
import subprocess
import time
from datetime import datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from opsconsole import health, scheduler
from opsconsole.devserver import free_port
from opsconsole.models import SweepHeartbeat
from tests.conftest import logged_in
from tests.servers import start_worker, stop_worker

STATUS_URL = "/status/"
# The live probe is bounded at LIVE_PROBE_SECONDS; the whole answer must stay near a second.
STATUS_BOUND_SECONDS = 1.5
# The real-worker test's threshold: approval expiry (every 2 s) is behind after 3 missed runs.
TEST_STALE_SECONDS = 3


def fresh_heartbeats(at: datetime | None = None) -> None:
    for name in health.WATCHED_SWEEPS:
        health.heartbeat_record(name=name, at=at or timezone.now())


def closed_port() -> int:
    """A port nothing listens on (connections are refused at once)."""
    return free_port()


# --- who may ask --------------------------------------------------------------------------------


def test_anonymous_people_are_sent_to_the_login_page(db):
    response = Client().get(STATUS_URL)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_people_without_a_role_are_refused(outsider):
    response = logged_in(outsider).get(STATUS_URL)

    assert response.status_code == 403


@pytest.mark.parametrize("persona", ["oncall", "reviewer", "admin"])
def test_every_role_reads_the_status(db, request, persona):
    fresh_heartbeats()

    response = logged_in(request.getfixturevalue(persona)).get(STATUS_URL)

    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    body = response.json()
    assert body["background"]["ok"] is True
    assert body["background"]["stale"] == []
    assert set(body["background"]["last_ok_at"]) == set(health.WATCHED_SWEEPS)
    assert body["live"] == {"ok": True}  # the in-memory layer, or CI's Redis


def test_the_status_is_read_only(oncall):
    assert logged_in(oncall).post(STATUS_URL).status_code == 405


# --- stale and fresh heartbeats ------------------------------------------------------------------


def test_fresh_heartbeats_are_ok(db):
    fresh_heartbeats()

    assert health.background_status() | {"last_ok_at": {}, "seconds_since": {}} == {
        "ok": True,
        "stale": [],
        "labels": health.WATCHED_SWEEPS,
        "last_ok_at": {},
        "seconds_since": {},
    }


def test_a_sweep_that_missed_three_runs_is_behind(db, settings):
    settings.OPSCONSOLE_SWEEP_STALE_SECONDS = 3
    now = timezone.now()
    fresh_heartbeats(now)
    # approval expiry runs every 2 s: 5 s is fine (under 3 x 2 s), 7 s is three missed runs.
    health.heartbeat_record(name="approvals.expire_due", at=now - timedelta(seconds=5))
    assert health.background_status(now=now)["ok"] is True

    health.heartbeat_record(name="approvals.expire_due", at=now - timedelta(seconds=7))
    status = health.background_status(now=now)

    assert status["ok"] is False
    assert status["stale"] == ["approvals.expire_due"]
    assert status["seconds_since"]["approvals.expire_due"] == 7.0


def test_the_setting_is_the_least_time_before_a_sweep_counts_as_behind(db, settings):
    settings.OPSCONSOLE_SWEEP_STALE_SECONDS = 30
    now = timezone.now()
    fresh_heartbeats(now - timedelta(seconds=29))
    assert health.background_status(now=now)["ok"] is True

    fresh_heartbeats(now - timedelta(seconds=31))
    status = health.background_status(now=now)

    # Everything but the expiring-approval notices (every 15 s: behind only after 45 s).
    assert status["stale"] == [n for n in health.WATCHED_SWEEPS if n != "approvals.notify_expiring"]


def test_a_sweep_that_never_ran_is_behind_once_it_had_its_time(db, monkeypatch):
    fresh_heartbeats()
    SweepHeartbeat.objects.filter(name="runs.reap_silent").delete()
    started = timezone.now()
    monkeypatch.setattr(health, "_watching_since", None)

    # Just started watching (a fresh server, the demo's first page): not an outage yet.
    assert health.background_status(now=started)["ok"] is True
    # Still nothing after its stale period: the worker never came up.
    later = started + timedelta(seconds=health.stale_after_seconds("runs.reap_silent") + 1)
    SweepHeartbeat.objects.update(last_ok_at=later)
    SweepHeartbeat.objects.filter(name="runs.reap_silent").delete()
    status = health.background_status(now=later)

    assert status["ok"] is False
    assert status["stale"] == ["runs.reap_silent"]
    assert "runs.reap_silent" not in status["last_ok_at"]


def test_a_heartbeat_is_one_row_per_sweep_moved_forward_in_one_statement(
    db, django_assert_num_queries
):
    earlier = timezone.now() - timedelta(minutes=5)
    health.heartbeat_record(name="runs.reap_silent", at=earlier)

    with django_assert_num_queries(1):
        health.heartbeat_record(name="runs.reap_silent")

    row = SweepHeartbeat.objects.get(name="runs.reap_silent")
    assert row.last_ok_at > earlier
    assert SweepHeartbeat.objects.count() == 1


# --- the sweeps record -----------------------------------------------------------------------------


def test_the_embedded_scheduler_records_every_sweep_it_runs(db, monkeypatch):
    # Make the hourly purge and the rollup due now.
    monkeypatch.setattr(scheduler, "_last_run", {})

    scheduler.run_due_sweeps()

    beat_tasks = {entry["task"] for entry in django_settings.CELERY_BEAT_SCHEDULE.values()}
    assert set(SweepHeartbeat.objects.values_list("name", flat=True)) == beat_tasks
    assert health.background_status()["ok"] is True


def test_a_celery_sweep_records_under_its_own_task_name(db):
    from agents.gateway.tasks import reap_runs

    reap_runs.delay().get()

    assert list(SweepHeartbeat.objects.values_list("name", flat=True)) == [reap_runs.name]


def test_a_failing_sweep_records_nothing(db, monkeypatch):
    from agents.gateway import services
    from agents.gateway.tasks import reap_runs

    def fail(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(services, "runs_reap_silent", fail)

    with pytest.raises(RuntimeError):
        reap_runs.run()
    assert not SweepHeartbeat.objects.exists()


# --- the channel layer ----------------------------------------------------------------------------


def redis_layer(port: int) -> dict:
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": f"redis://127.0.0.1:{port}/0", "socket_timeout": 15}]},
        }
    }


def test_a_refused_channel_layer_is_reported_not_ok(oncall, settings):
    settings.CHANNEL_LAYERS = redis_layer(closed_port())
    fresh_heartbeats()

    started = time.monotonic()
    response = logged_in(oncall).get(STATUS_URL)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["live"] == {"ok": False}
    assert response.json()["background"]["ok"] is True
    assert elapsed < STATUS_BOUND_SECONDS, elapsed


def test_a_channel_layer_that_never_answers_is_reported_not_ok_within_the_bound(oncall, settings):
    # Accepts connections (the kernel's backlog) but never answers: the worst kind of dead.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings.CHANNEL_LAYERS = redis_layer(silent.getsockname()[1])

        started = time.monotonic()
        response = logged_in(oncall).get(STATUS_URL)
        elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["live"] == {"ok": False}
    assert elapsed < STATUS_BOUND_SECONDS, elapsed


# --- the page ------------------------------------------------------------------------------------


def test_pages_carry_the_hidden_notice_for_live_js_to_fill(oncall):
    page = logged_in(oncall).get(reverse("overview")).content.decode()

    assert (
        f'<div id="health-status" class="live-status" role="status" data-url="{STATUS_URL}" hidden>'
        in page
    )


# --- a real worker, with Redis stopped and restarted ------------------------------------------------


def heartbeat(name: str = "approvals.expire_due") -> datetime | None:
    at = SweepHeartbeat.objects.filter(name=name).values_list("last_ok_at", flat=True).first()
    connection.close()  # never hold a snapshot the worker's writes must wait behind
    return at


def wait_for(what: str, check, *, seconds: float, process: subprocess.Popen, log) -> float:
    """Poll ``check`` until it holds; returns when it did (monotonic). Fails at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return time.monotonic()
        assert process.poll() is None, f"the worker exited:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{what} within {seconds} s\n{log.read_text()[-4000:]}"
        time.sleep(0.25)


@pytest.fixture
def worker(own_redis, tmp_path, transactional_db):
    port, _, _ = own_redis
    log = tmp_path / "worker.log"
    process = start_worker(redis_url=f"redis://127.0.0.1:{port}/0", tmp_path=tmp_path, log=log)
    try:
        yield process, log
    finally:
        stop_worker(process, timeout=15)


@pytest.mark.django_db(transaction=True)
def test_with_redis_stopped_the_console_says_so_decisions_go_on_and_the_worker_recovers(
    own_redis, worker, settings, agent, oncall, publish_policy, start_run
):
    port, start_redis, stop_redis = own_redis
    process, log = worker
    settings.OPSCONSOLE_SWEEP_STALE_SECONDS = TEST_STALE_SECONDS
    # This process's channel layer and cache use the private Redis too, so its outage is real here.
    settings.CHANNEL_LAYERS = redis_layer(port)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    publish_policy('tools: {allow: ["kb.read"]}')
    run = start_run()
    browser = logged_in(oncall)
    connection.close()

    def status() -> dict:
        started = time.monotonic()
        response = browser.get(STATUS_URL)
        assert response.status_code == 200
        assert time.monotonic() - started < STATUS_BOUND_SECONDS
        return response.json()

    questions = iter(range(1000))

    def decide() -> dict:
        started = time.monotonic()
        response = agent.api.post_json(  # a new question each time, or the loop guard stops it
            f"/api/v1/runs/{run['id']}/tool-calls",
            {"tool": "kb.read", "args": {"q": next(questions)}},
        )
        assert time.monotonic() - started < 2.0
        assert response.status_code == 200, response.content
        return response.json()

    # Beat and the worker are running: the heartbeat advances and, once every watched sweep has
    # run (expiring-approval notices first run 15 s after beat starts), the status is clear.
    wait_for("a first heartbeat", heartbeat, seconds=60, process=process, log=log)
    seen = heartbeat()
    wait_for("a second heartbeat", lambda: heartbeat() > seen, seconds=20, process=process, log=log)
    wait_for(
        "every sweep ran",
        lambda: _all_ran_and_clear(status()),
        seconds=45,
        process=process,
        log=log,
    )
    assert decide()["decision"] == "allow"

    stopped = time.monotonic()
    stop_redis()
    noticed = wait_for(
        "the status reports background work behind",
        lambda: not status()["background"]["ok"],
        seconds=30,
        process=process,
        log=log,
    )
    behind = status()
    assert "approvals.expire_due" in behind["background"]["stale"]
    assert behind["live"] == {"ok": False}
    # Gateway decisions go on without Redis (broadcasts dropped, rate limits fail open).
    assert decide()["decision"] == "allow"
    assert decide()["decision"] == "allow"

    last_before = heartbeat()
    restarted = time.monotonic()
    restarted_at = timezone.now()
    start_redis()
    resumed = wait_for(
        "the worker resumes by itself",
        lambda: heartbeat() > max(last_before, restarted_at),
        seconds=60,
        process=process,
        log=log,
    )
    cleared = wait_for(
        "the status clears",
        lambda: _clear(status()),
        seconds=30,
        process=process,
        log=log,
    )
    assert decide()["decision"] == "allow"
    print(
        f"\nbackground health: notice {noticed - stopped:.1f} s after Redis stopped (approval "
        f"expiry behind after {health.stale_after_seconds('approvals.expire_due'):.0f} s); "
        f"worker resumed {resumed - restarted:.1f} s after Redis came back; status clear after "
        f"{cleared - restarted:.1f} s"
    )


def _clear(body: dict) -> bool:
    return body["background"]["ok"] and body["live"]["ok"]


def _all_ran_and_clear(body: dict) -> bool:
    # Every watched sweep has a heartbeat: a sweep that never ran would otherwise count as behind
    # as soon as its stale period from when this process first looked is over (whatever tests ran
    # before), and could be what reports the outage instead of approval expiry.
    return _clear(body) and set(health.WATCHED_SWEEPS) <= set(body["background"]["last_ok_at"])


def test_the_status_carries_the_kill_switch_for_pages_that_missed_its_event(admin, oncall):
    from agents.policy.services import kill_switch_set

    kill_switch_set(mode="stop_all", reason="incident 7", actor="user:ada")

    body = logged_in(oncall).get(STATUS_URL).json()

    # live.js applies this to the banner after every reconnect (events sent meanwhile are lost).
    assert body["kill_switch"] == {"mode": "stop_all", "reason": "incident 7", "set_by": "user:ada"}
