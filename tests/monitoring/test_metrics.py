"""/metrics: Prometheus text format, counted gateway decisions, state gauges, the token."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.models import KillSwitch, ToolBreaker


def scrape(client, **headers) -> dict[str, list]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        family.name: family.samples
        for family in text_string_to_metric_families(response.content.decode())
    }


def sample(families, name: str, **labels) -> float:
    for family_samples in families.values():
        for item in family_samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return item.value
    return 0.0


@pytest.mark.django_db
def test_metrics_parse_and_count_decisions_by_outcome_and_stop_reason(agent, start_run, anonymous):
    before = scrape(anonymous)
    run = start_run()
    tool_calls = f"/api/v1/runs/{run['id']}/tool-calls"
    agent.api.post_json(tool_calls, {"tool": "search.read", "args": {"q": "a"}})
    agent.api.post_json(tool_calls, {"tool": "email.send", "args": {}})  # denied: stops the run

    after = scrape(anonymous)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    total = "opsconsole_gateway_decisions_total"
    assert delta(total, kind="tool_call", outcome="allow", stop_reason="none") == 1
    # Labelled by kind, never by the tool an agent made up.
    assert delta(total, kind="tool_call", outcome="stop", stop_reason="tool_denied") == 1
    assert delta("opsconsole_gateway_decision_seconds_count", kind="tool_call") == 2
    assert "opsconsole_gateway_decision_seconds" in after


@pytest.mark.django_db
def test_metrics_read_pending_approvals_kill_switch_and_breakers_from_the_database(
    agent, start_run, publish_policy, anonymous
):
    publish_policy(
        'tools: {allow: ["email.send"]}\nbudgets: {max_tool_calls: 15}\nwrites: {require_approval: true}'
    )
    run = start_run()
    agent.api.post_json(f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {}})
    KillSwitch.objects.filter(pk=1).update(mode="disable_writes")
    ToolBreaker.objects.create(tool="http.get", state="open", failure_rate=0.75)

    families = scrape(anonymous)

    assert sample(families, "opsconsole_pending_approvals") == 1
    assert sample(families, "opsconsole_kill_switch_mode", mode="disable_writes") == 1
    assert sample(families, "opsconsole_kill_switch_mode", mode="off") == 0
    assert sample(families, "opsconsole_tool_breaker_state", tool="http.get", state="open") == 1
    assert sample(families, "opsconsole_tool_breaker_state", tool="http.get", state="closed") == 0
    assert sample(families, "opsconsole_tool_breaker_failure_rate", tool="http.get") == 0.75


@pytest.mark.django_db
def test_a_configured_token_is_required(anonymous, settings):
    settings.OPSCONSOLE_METRICS_TOKEN = "scrape-me"

    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    families = scrape(anonymous, HTTP_AUTHORIZATION="Bearer scrape-me")
    assert "opsconsole_pending_approvals" in families


@pytest.mark.django_db
def test_metrics_only_answer_get(anonymous):
    assert anonymous.post("/metrics").status_code == 405


def test_multiprocess_mode_sums_the_workers_files(tmp_path, monkeypatch):
    """With PROMETHEUS_MULTIPROC_DIR set, a scrape reads every worker's files."""
    import subprocess
    import sys

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    worker = (
        "from prometheus_client import Counter\n"
        "Counter('opsconsole_gateway_decisions', 'x', ['kind', 'outcome', 'stop_reason'])"
        ".labels('tool_call', 'allow', 'none').inc(3)\n"
    )
    for _ in range(2):  # two worker processes
        subprocess.run([sys.executable, "-c", worker], check=True)
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (value,) = [s.value for s in families["opsconsole_gateway_decisions"].samples]
    assert value == 6
