"""Rollups: exact percentiles from known events, idempotent upserts, the periodic job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from agents.gateway import services
from agents.models import ALL_VERSIONS, BucketSize, MetricRollup, Run, ToolCall
from agents.monitoring import rollups as monitoring
from approvals.models import ApprovalRequest
from approvals.services import approval_decide

HOUR = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

EMAIL_POLICY = """
tools:
  allow: ["search.read", "email.send"]
budgets: {max_steps: 30, max_seconds: 90, max_tool_calls: 15}
writes: {require_approval: true}
"""


def finished_run(
    agent,
    *,
    version: str = "v1",
    calls: int = 0,
    tokens: tuple[int, ...] = (),
    latencies: tuple[int, ...] = (),
    usd: str = "0",
    ended_at: datetime = HOUR + timedelta(minutes=30),
    status: str = "succeeded",
) -> Run:
    """A run made through the gateway services, then pinned to a known end time."""
    run, _ = services.run_start(agent=agent, task="known run", agent_version=version)
    for count in tokens:
        services.step_record(
            agent=agent, run_id=run.pk, tokens_in=count, tokens_out=0, usd=Decimal(usd)
        )
        usd = "0"  # the run's spend is charged on its first step only
    for index in range(calls):
        call = services.tool_call_decide(
            agent=agent, run_id=run.pk, tool="search.read", args={"q": f"question {index}"}
        )
        if index < len(latencies):
            services.tool_call_report(
                agent=agent, tool_call_id=call.pk, ok=True, output={}, latency_ms=latencies[index]
            )
    services.run_finish(agent=agent, run_id=run.pk, status=status)
    Run.objects.filter(pk=run.pk).update(ended_at=ended_at)
    return run


def test_nearest_rank_percentiles_are_observed_values():
    values = [1, 2, 3, 4, 10]
    assert monitoring.percentile(values, 50) == 3  # rank ceil(2.5) = 3
    assert monitoring.percentile(values, 95) == 10  # rank ceil(4.75) = 5; linear would say 8.8
    assert monitoring.percentile([7], 95) == 7
    assert monitoring.percentile([], 50) is None
    assert monitoring.percentile(range(1, 101), 95) == 95


@pytest.mark.django_db
def test_a_rollup_from_known_events_gives_the_exact_percentiles(agent):
    bot = agent.agent
    finished_run(bot, calls=1, tokens=(100,), latencies=(10,), usd="0.10")
    finished_run(bot, calls=2, tokens=(200, 300), latencies=(20, 30), usd="0.20")
    finished_run(bot, calls=3, tokens=(400,), latencies=(40, 50, 60), usd="0.30")
    finished_run(bot, calls=4, tokens=(500,), latencies=(70,), usd="0.40")
    finished_run(bot, calls=10, tokens=(1000,), latencies=(1000,), usd="1.00", status="failed")
    # Outside the bucket: ended an hour later, so it is not counted here.
    finished_run(bot, calls=9, tokens=(9999,), ended_at=HOUR + timedelta(hours=1, minutes=1))

    written = monitoring.rollup_bucket(size=BucketSize.HOUR, start=HOUR)

    assert written == 3  # (agent, v1), (agent, every version), (every agent)
    row = MetricRollup.objects.get(agent=bot, agent_version="v1", size="hour", start=HOUR)
    assert row.runs == 5
    assert row.stop_reasons == {"error": 1, "ok": 4}
    assert (row.tool_calls_p50, row.tool_calls_p95) == (3.0, 10.0)
    assert row.requests == 6
    # tokens per request: 100 200 300 400 500 1000 -> p50 rank 3, p95 rank 6
    assert (row.tokens_p50, row.tokens_p95) == (300.0, 1000.0)
    assert row.usd_sum == Decimal("2.000000")
    assert row.usd_avg == Decimal("0.400000")
    assert row.tool_results == 8
    assert row.latency_p95 == 1000.0
    assert row.tool_latency_p95 == {"search.read": 1000.0}
    fleet = MetricRollup.objects.get(agent=None, agent_version=ALL_VERSIONS, start=HOUR)
    assert fleet.runs == 5 and fleet.tool_calls_p95 == 10.0


@pytest.mark.django_db
def test_versions_have_their_own_rows_and_the_agent_row_spans_them(agent):
    bot = agent.agent
    for calls in (1, 1, 1):
        finished_run(bot, version="v1", calls=calls)
    for calls in (5, 6):
        finished_run(bot, version="v2", calls=calls)

    monitoring.rollup_bucket(size=BucketSize.HOUR, start=HOUR)

    rows = {
        r.agent_version: r for r in MetricRollup.objects.filter(agent=bot, size="hour", start=HOUR)
    }
    assert rows["v1"].tool_calls_p95 == 1.0
    assert rows["v2"].tool_calls_p95 == 6.0
    assert rows[ALL_VERSIONS].runs == 5
    assert rows[ALL_VERSIONS].tool_calls_p50 == 1.0  # 1 1 1 5 6 -> rank 3


@pytest.mark.django_db
def test_approval_wait_is_measured_from_request_to_decision(agent, reviewer, publish_policy):
    publish_policy(EMAIL_POLICY)
    bot = agent.agent
    waits = [30, 60, 600]
    for seconds in waits:
        run, _ = services.run_start(agent=bot, task="write", agent_version="v1")
        call = services.tool_call_decide(agent=bot, run_id=run.pk, tool="email.send", args={})
        approval_decide(request_id=call.approval.pk, reviewer=reviewer.user, verdict="approve")
        ApprovalRequest.objects.filter(pk=call.approval.pk).update(
            created_at=HOUR, decided_at=HOUR + timedelta(seconds=seconds)
        )
        services.run_finish(agent=bot, run_id=run.pk, status="succeeded")
        Run.objects.filter(pk=run.pk).update(ended_at=HOUR + timedelta(minutes=5))

    monitoring.rollup_bucket(size=BucketSize.HOUR, start=HOUR)

    row = MetricRollup.objects.get(agent=bot, agent_version="v1", start=HOUR)
    assert row.approvals == 3
    assert (row.approval_wait_p50, row.approval_wait_p95) == (60.0, 600.0)


@pytest.mark.django_db
def test_the_rollup_job_is_an_idempotent_upsert_of_hour_and_day_buckets(agent):
    bot = agent.agent
    now = HOUR + timedelta(minutes=45)
    finished_run(bot, calls=2)

    first = monitoring.rollups_compute(now=now)
    rows = MetricRollup.objects.order_by("pk").values_list("pk", "runs", "tool_calls_p95")
    snapshot = list(rows)
    # Computed again (after the buckets are due again: see the next test): the same rows.
    again = monitoring.rollups_compute(now=now + timedelta(minutes=11))

    assert first == again == {"rollups": 6, "alerts": 0}  # 3 series x (hour, day)
    assert list(rows.all()) == snapshot
    day = MetricRollup.objects.get(agent=bot, agent_version="v1", size="day")
    assert day.start == datetime(2026, 3, 2, tzinfo=UTC) and day.runs == 1


@pytest.mark.django_db
def test_the_current_hour_is_recomputed_each_minute_the_day_every_ten_and_closed_ones_settle(
    agent,
):
    """Each bucket is computed from raw rows, and a day holds up to a day of them: recomputing
    it every minute in every process made the job's cost grow with the day's traffic."""
    bot = agent.agent
    now = HOUR + timedelta(minutes=45)
    finished_run(bot, calls=2)
    assert monitoring.rollups_compute(now=now)["rollups"] == 6  # 3 series x (hour, day)
    assert monitoring.rollups_compute(now=now + timedelta(seconds=10))["rollups"] == 0
    assert monitoring.rollups_compute(now=now + timedelta(minutes=1))["rollups"] == 3  # the hour
    assert monitoring.rollups_compute(now=now + timedelta(minutes=10))["rollups"] == 6

    # Once the hour has closed, it is recomputed until a computation after it settled (5 minutes
    # after its end), then left as it is.
    def runs_in_hour() -> int:
        return MetricRollup.objects.get(agent=bot, agent_version="v1", start=HOUR).runs

    finished_run(bot, calls=5)  # ended in HOUR, committed late
    monitoring.rollups_compute(now=HOUR + timedelta(hours=1, minutes=2))
    assert runs_in_hour() == 2
    finished_run(bot, calls=6)
    monitoring.rollups_compute(now=HOUR + timedelta(hours=1, minutes=20))
    assert runs_in_hour() == 3
    finished_run(bot, calls=7)  # settled: not counted any more
    monitoring.rollups_compute(now=HOUR + timedelta(hours=1, minutes=40))
    assert runs_in_hour() == 3


@pytest.mark.django_db
def test_a_recomputed_bucket_drops_series_that_no_longer_have_runs(agent):
    run = finished_run(agent.agent, version="v9", calls=1)
    monitoring.rollup_bucket(size=BucketSize.HOUR, start=HOUR)
    assert MetricRollup.objects.filter(agent_version="v9").exists()

    ToolCall.objects.filter(run=run).delete()
    Run.objects.filter(pk=run.pk).update(ended_at=HOUR - timedelta(days=2))
    monitoring.rollup_bucket(size=BucketSize.HOUR, start=HOUR)

    assert not MetricRollup.objects.filter(start=HOUR).exists()


@pytest.mark.django_db
def test_the_celery_task_and_the_embedded_scheduler_run_the_rollup(agent, settings):
    from agents.monitoring.tasks import rollup_metrics
    from opsconsole import scheduler

    finished_run(agent.agent, calls=1, ended_at=datetime.now(UTC))
    result = rollup_metrics.delay().get()
    assert result["rollups"] == 6
    assert "monitoring.rollup" in {
        entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()
    }

    MetricRollup.objects.all().delete()
    scheduler._last_run.pop("monitoring.rollup", None)
    done = scheduler.run_due_sweeps()
    assert done["rollups"] == 6
    assert MetricRollup.objects.filter(size="hour").count() == 3


# --- the monitoring pages -----------------------------------------------------------------------


@pytest.fixture
def rolled_up(agent):
    """Two versions of support-bot with runs ended in the current hour, rolled up."""
    now = datetime.now(UTC)
    for calls, version in ((1, "v1"), (2, "v1"), (6, "v2")):
        finished_run(agent.agent, version=version, calls=calls, ended_at=now)
    monitoring.rollups_compute(now=now)
    return agent


@pytest.mark.django_db
def test_the_dashboard_draws_charts_from_rollups_without_scripts_or_inline_styles(
    rolled_up, oncall, client
):
    client.force_login(oncall.user)

    response = client.get("/monitoring/?agent=support-bot&version=v1&compare_version=v2")

    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('<svg class="chart"') == 2 + 6  # stop reasons per series + 6 line charts
    assert "support-bot · v1" in page and "support-bot · v2" in page
    assert 'class="sr-ok"' in page
    assert "css/monitoring.css" in page
    assert " style=" not in page
    assert "<script>" not in page  # only the layout's external scripts
    assert "/monitoring/export?format=jsonl&amp;agent=support-bot" in page


@pytest.mark.django_db
def test_the_dashboard_reads_rollups_only_with_a_fixed_number_of_queries(
    rolled_up, oncall, client, django_assert_num_queries
):
    client.force_login(oncall.user)
    client.get("/monitoring/")  # warm the session and role caches

    # session, user, role, console chrome (4: kill switch, pending approvals, degraded tools,
    # paused agents), agents named, 2 series, versions, alerts
    with django_assert_num_queries(12) as captured:
        response = client.get("/monitoring/?agent=support-bot&compare_version=v2")
    assert response.status_code == 200
    sql = " ".join(query["sql"] for query in captured.captured_queries)
    assert "agents_traceevent" not in sql and "agents_toolcall" not in sql


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    ["/monitoring/", "/monitoring/drift/", "/monitoring/golden/", "/monitoring/dry-run"],
)
def test_monitoring_pages_need_a_login_and_a_role(path, client, outsider, oncall):
    assert client.get(path).status_code == 302
    client.force_login(outsider.user)
    assert client.get(path).status_code == 403
    client.force_login(oncall.user)
    assert client.get(path).status_code == 200


@pytest.mark.django_db
def test_marking_golden_from_the_console_and_replaying_the_golden_set(agent, oncall, client):
    client.force_login(oncall.user)
    run = finished_run(agent.agent, calls=2)

    response = client.post("/monitoring/golden/mark", {"run_id": run.pk, "note": "happy path"})
    again = client.post("/monitoring/golden/mark", {"run_id": run.pk})

    assert response.status_code == again.status_code == 302
    from agents.models import GoldenRun
    from opsconsole.models import AuditEntry

    assert GoldenRun.objects.get().note == "happy path"
    assert (
        AuditEntry.objects.filter(action="run.golden_mark", actor="user:olivia-oncall").count() == 1
    )
    page = client.get("/monitoring/golden/?replay=1").content.decode()
    assert "No difference in 1 run" in page
    replayed = client.get(f"/monitoring/runs/{run.pk}/replay")
    assert replayed.status_code == 200 and "same" in replayed.content.decode()
    assert client.post(f"/monitoring/golden/{run.pk}/unmark").status_code == 302
    assert not GoldenRun.objects.exists()
    assert client.get("/monitoring/golden/mark").status_code == 405


@pytest.mark.django_db
def test_the_dry_run_page_says_how_many_recent_runs_a_draft_would_stop(agent, oncall, client):
    client.force_login(oncall.user)
    for _ in range(2):
        finished_run(agent.agent, calls=2)
    finished_run(agent.agent, calls=0)
    draft = "tools: {allow: []}\nbudgets: {max_tool_calls: 15}\n"

    response = client.post("/monitoring/dry-run", {"document": draft, "limit": 1000})
    bad = client.post("/monitoring/dry-run", {"document": "tools: {allow: 7}", "limit": 10})

    assert response.status_code == 200
    assert "This change would have stopped 2 of the last 3 runs" in response.content.decode()
    assert "tool_denied:search.read" in response.content.decode()
    assert bad.status_code == 422
