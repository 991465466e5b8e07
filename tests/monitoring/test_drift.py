"""Drift rules: fire on a real shift, stay quiet on noise, and act as an audited rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.models import (
    ALL_VERSIONS,
    DriftAlert,
    DriftRule,
    MetricRollup,
    PolicyVersion,
)
from agents.monitoring import drift as monitoring_drift
from agents.monitoring import rollups as monitoring_rollups
from opsconsole.models import AuditEntry, WebhookDelivery, WebhookEndpoint

NOW_BUCKET = datetime(2026, 3, 9, 10, 0, tzinfo=UTC)


def baseline(agent, *, metric: str = "tool_calls_p95", version: str = ALL_VERSIONS, values=None):
    """Hourly rollups every 6 hours over the previous 7 days: 4, 5, 6, 4, 5, 6, ..."""
    values = values or [4.0, 5.0, 6.0]
    for index in range(28):
        MetricRollup.objects.create(
            agent=agent,
            agent_version=version,
            size="hour",
            start=NOW_BUCKET - timedelta(hours=6 * (index + 1)),
            runs=40,
            requests=40,
            stop_reasons={"ok": 40},
            **{metric: values[index % len(values)]},
        )


def current(agent, *, value: float, runs: int = 40, metric="tool_calls_p95", version=ALL_VERSIONS):
    return MetricRollup.objects.create(
        agent=agent,
        agent_version=version,
        size="hour",
        start=NOW_BUCKET,
        runs=runs,
        requests=runs,
        stop_reasons={"ok": runs},
        **{metric: value},
    )


def rule(agent, **fields) -> DriftRule:
    defaults = {
        "name": "tool-calls-spike",
        "metric": "tool_calls_p95",
        "agent": agent,
        "relative_threshold": 0.5,
        "z_threshold": 3.0,
        "min_samples": 20,
    }
    return DriftRule.objects.create(**{**defaults, **fields})


@pytest.fixture
def webhook(db) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        name="oncall", url="https://hooks.example.com/x", secret="s3cret"
    )


@pytest.mark.django_db
def test_a_rule_fires_on_a_constructed_shift_stores_the_alert_and_notifies(agent, webhook):
    bot = agent.agent
    spike = rule(bot)
    baseline(bot)
    current(bot, value=12.0)

    raised = monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET)

    assert raised == 1
    alert = DriftAlert.objects.get()
    assert (alert.rule, alert.agent, alert.metric) == (spike, bot, "tool_calls_p95")
    assert alert.value == 12.0
    assert alert.baseline_mean == pytest.approx(5.0, abs=0.05)
    assert alert.relative_change == pytest.approx(1.4, abs=0.02)
    assert alert.z_score > 3
    assert alert.action_taken == ""
    delivery = WebhookDelivery.objects.get(event="drift.alert")
    assert delivery.payload["rule"] == "tool-calls-spike"
    assert delivery.payload["agent"] == "support-bot"
    assert bot.__class__.objects.get(pk=bot.pk).enabled  # an alert-only rule does not act


@pytest.mark.django_db
def test_the_same_bucket_alerts_once(agent, webhook):
    rule(agent.agent)
    baseline(agent.agent)
    current(agent.agent, value=12.0)

    assert monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET) == 1
    assert monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET) == 0
    assert DriftAlert.objects.count() == 1
    assert WebhookDelivery.objects.filter(event="drift.alert").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "runs", "why"),
    [
        (6.0, 40, "within the baseline's own spread"),
        (7.0, 40, "40 % up and z 2.4: under both thresholds"),
        (30.0, 3, "a wild value from three runs is not a sample"),
    ],
)
def test_a_rule_stays_quiet_on_noise(agent, webhook, value, runs, why):
    rule(agent.agent)
    baseline(agent.agent)
    current(agent.agent, value=value, runs=runs)

    assert monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET) == 0, why
    assert not DriftAlert.objects.exists()
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_a_flat_baseline_has_no_z_score_so_a_z_only_rule_stays_quiet(agent):
    rule(agent.agent, relative_threshold=None, z_threshold=2.0)
    baseline(agent.agent, values=[5.0])
    current(agent.agent, value=5.5)

    assert monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET) == 0


@pytest.mark.django_db
def test_a_pinned_version_is_the_baseline_of_a_new_version(agent):
    bot = agent.agent
    rule(
        bot,
        name="v2-tokens",
        metric="tokens_p95",
        agent_version="v2",
        baseline="pinned_version",
        baseline_version="v1",
        z_threshold=None,
        relative_threshold=0.3,
    )
    baseline(bot, metric="tokens_p95", version="v1", values=[1000.0, 1100.0])
    current(bot, metric="tokens_p95", version="v2", value=2000.0)

    assert monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET) == 1
    alert = DriftAlert.objects.get()
    assert alert.agent_version == "v2"
    assert alert.baseline_mean == pytest.approx(1050.0)


@pytest.mark.django_db
def test_a_falling_metric_fires_only_a_rule_watching_it_fall(agent):
    bot = agent.agent
    rule(bot, name="rises", direction="up")
    rule(bot, name="falls", direction="down")
    baseline(bot, values=[20.0, 22.0, 24.0])
    current(bot, value=2.0)

    monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET)

    assert list(DriftAlert.objects.values_list("rule__name", flat=True)) == ["falls"]


@pytest.mark.django_db
def test_an_acting_rule_disables_the_agent_and_its_next_gateway_call_gets_agent_disabled(
    agent, start_run
):
    bot = agent.agent
    run = start_run(agent_version="v1")
    rule(bot, action="disable_agent")
    baseline(bot)
    current(bot, value=12.0)

    monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET)

    bot.refresh_from_db()
    assert not bot.enabled
    alert = DriftAlert.objects.get()
    assert alert.action_taken == "agent disabled"
    entry = AuditEntry.objects.get(action="agent.disable")
    assert entry.actor == "rule:tool-calls-spike"
    assert f"drift alert {alert.pk}" in entry.reason
    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "search.read", "args": {"q": "x"}}
    )
    assert response.status_code == 200, response.content
    assert response.json()["decision"] == "stop"
    assert response.json()["stop_reason"] == "agent_disabled"


@pytest.mark.django_db
def test_an_acting_rule_switches_the_agent_to_approvals_for_every_write(
    agent, start_run, publish_policy
):
    publish_policy(
        """
tools:
  allow: ["search.read", "email.send"]
  definitions:
    email.send: {effect: write, approval: {required: false}}
budgets: {max_tool_calls: 15}
"""
    )
    bot = agent.agent
    run = start_run()
    before = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {"to": "a"}}
    )
    assert before.json()["decision"] == "allow"
    rule(bot, action="require_approval_for_writes")
    baseline(bot)
    current(bot, value=12.0)

    monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET)

    latest = PolicyVersion.objects.order_by("-number").first()
    assert latest.author == "rule:tool-calls-spike"
    assert latest.document["agents"]["support-bot"]["approve_all_writes"] is True
    assert AuditEntry.objects.filter(
        action="policy.publish", actor="rule:tool-calls-spike"
    ).exists()
    assert (
        DriftAlert.objects.get().action_taken == f"writes need approval (policy v{latest.number})"
    )
    after = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {"to": "b"}}
    )
    assert after.json()["decision"] == "pending_approval"
    reads = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "search.read", "args": {"q": "c"}}
    )
    assert reads.json()["decision"] == "allow"  # reads are untouched


@pytest.mark.django_db
def test_rules_that_act_must_name_an_agent_and_every_rule_needs_a_threshold(admin):
    from opsconsole.errors import Invalid

    with pytest.raises(Invalid) as raised:
        monitoring_drift.drift_rule_save(
            actor="user:ada-admin",
            fields={"name": "fleet", "metric": "stop_rate", "action": "disable_agent"},
        )
    assert any("threshold" in p for p in raised.value.detail)
    assert any("name its agent" in p for p in raised.value.detail)
    assert not DriftRule.objects.exists()


@pytest.mark.django_db
def test_rollups_then_drift_end_to_end_from_raw_runs(agent):
    """The job computes rollups from raw runs, then evaluates rules on them."""
    from tests.monitoring.test_rollups import finished_run

    bot = agent.agent
    rule(bot, name="calls", min_samples=3, z_threshold=None, relative_threshold=1.0)
    now = NOW_BUCKET + timedelta(minutes=50)
    for day in range(1, 4):
        for _ in range(2):
            finished_run(bot, calls=1, ended_at=NOW_BUCKET - timedelta(days=day))
        monitoring_rollups.rollup_bucket(size="hour", start=NOW_BUCKET - timedelta(days=day))
    for _ in range(3):
        finished_run(bot, calls=6, ended_at=NOW_BUCKET + timedelta(minutes=10))

    result = monitoring_rollups.rollups_compute(now=now)

    assert result["alerts"] == 1
    alert = DriftAlert.objects.get()
    assert (alert.value, alert.baseline_mean, alert.samples) == (6.0, 1.0, 3)


@pytest.mark.django_db
def test_the_drift_page_shows_alerts_and_only_admins_create_rules(agent, oncall, admin, client):
    rule(agent.agent)
    baseline(agent.agent)
    current(agent.agent, value=12.0)
    monitoring_drift.drift_evaluate(size="hour", start=NOW_BUCKET)
    fields = {
        "name": "usd-up",
        "metric": "usd_avg",
        "agent": "support-bot",
        "size": "day",
        "baseline": "previous_7_days",
        "direction": "up",
        "relative_threshold": "0.5",
        "min_samples": "10",
        "action": "none",
    }

    client.force_login(oncall.user)
    page = client.get("/monitoring/drift/").content.decode()
    refused = client.post("/monitoring/drift/rules", fields)
    client.force_login(admin.user)
    created = client.post("/monitoring/drift/rules", fields)
    duplicate = client.post("/monitoring/drift/rules", fields)
    no_threshold = client.post(
        "/monitoring/drift/rules", {**fields, "name": "x", "relative_threshold": ""}
    )

    assert "tool-calls-spike" in page and "Tool calls per run, p95" in page
    assert refused.status_code == 403
    assert created.status_code == 302
    saved = DriftRule.objects.get(name="usd-up")
    assert (saved.agent, saved.size, saved.relative_threshold) == (agent.agent, "day", 0.5)
    assert AuditEntry.objects.filter(action="drift_rule.save", actor="user:ada-admin").count() == 1
    assert duplicate.status_code == no_threshold.status_code == 422
    turned_off = client.post(f"/monitoring/drift/rules/{saved.pk}/enabled", {"enabled": "0"})
    assert turned_off.status_code == 302
    saved.refresh_from_db()
    assert not saved.enabled
