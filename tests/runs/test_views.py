"""The runs list and the run detail page (filters, keyset pages, the trace, stopping a run), and
the overview."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.models import Run, RunStatus, TraceEvent
from opsconsole.models import AuditEntry
from tests.conftest import logged_in


def bulk_runs(agent, count: int, **fields) -> list[Run]:
    now = timezone.now()
    return Run.objects.bulk_create(
        Run(
            agent=agent,
            task=f"task number {i}",
            policy_version=1,
            started_at=now - timedelta(seconds=i),
            max_tool_calls=15,
            tool_calls=i % 16,
            **fields,
        )
        for i in range(count)
    )


# --- the list ---------------------------------------------------------------------------------


def test_the_list_shows_each_run_with_usage_bars(oncall, agent, start_run):
    run = start_run(task="refund order 991")
    agent.api.post_json(f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}})
    page = logged_in(oncall).get(reverse("runs:list")).content.decode()
    assert f'id="run-{run["id"]}"' in page
    assert "refund order 991" in page
    assert 'title="tool calls: 1 / 15"' in page
    assert 'data-meter="steps"' in page


def test_it_filters_by_agent_status_stop_reason_time_and_task(
    oncall, agent, outsider_agent, start_run
):
    mine = start_run(task="summarise the ticket")
    other = start_run(outsider_agent, task="translate the reply")
    outsider_agent.api.post_json(
        f"/api/v1/runs/{other['id']}/tool-calls", {"tool": "email.send", "args": {}}
    )  # not allowed -> tool_denied:email.send
    Run.objects.filter(pk=mine["id"]).update(started_at=timezone.now() - timedelta(days=3))
    client = logged_in(oncall)

    def ids(**query) -> set[int]:
        response = client.get(reverse("runs:list"), query)
        assert response.status_code == 200
        return {run.pk for run in response.context["runs"]}

    assert ids() == {mine["id"], other["id"]}
    assert ids(agent="support-bot") == {mine["id"]}
    assert ids(status="stopped") == {other["id"]}
    assert ids(stop_reason="tool_denied") == {other["id"]}
    assert ids(stop_reason="tool_denied:email.send") == {other["id"]}
    assert ids(stop_reason="tool_denied:kb.read") == set()
    assert ids(range="24h") == {other["id"]}
    assert ids(q="SUMMARISE") == {mine["id"]}
    since = (timezone.now() - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M")
    until = (timezone.now() - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    assert ids(since=since, until=until) == {mine["id"]}


def test_a_bad_filter_is_shown_as_an_error_and_left_out(oncall, agent, start_run):
    run = start_run()
    response = logged_in(oncall).get(reverse("runs:list"), {"stop_reason": "bogus", "status": "x"})
    assert response.status_code == 200
    assert b"Not a stop reason" in response.content
    assert [r.pk for r in response.context["runs"]] == [run["id"]]


def test_keyset_pages_cover_every_run_once_even_with_equal_start_times(oncall, agent):
    runs = bulk_runs(agent.agent, 70)
    # Ten runs share one start time: the id breaks the tie.
    Run.objects.filter(pk__in=[r.pk for r in runs[40:50]]).update(started_at=runs[40].started_at)
    client = logged_in(oncall)
    seen, url, pages = [], reverse("runs:list"), 0
    while url:
        response = client.get(url)
        pages += 1
        seen += [run.pk for run in response.context["runs"]]
        cursor = response.context["next_cursor"]
        url = f"{reverse('runs:list')}?after={cursor}" if cursor else None
    assert pages == 2
    assert sorted(seen) == sorted(r.pk for r in runs)
    assert len(seen) == len(set(seen))


def test_a_garbled_cursor_gives_the_first_page(oncall, agent):
    bulk_runs(agent.agent, 3)
    response = logged_in(oncall).get(reverse("runs:list"), {"after": "nonsense-x"})
    assert response.status_code == 200
    assert len(response.context["runs"]) == 3


def test_the_list_costs_the_same_queries_for_5_or_50_runs(oncall, agent, django_assert_num_queries):
    client = logged_in(oncall)
    bulk_runs(agent.agent, 5)
    client.get(reverse("runs:list"))  # warm the session
    # session, user, role, kill switch, pending count, degraded tools, paused agents, agent names,
    # the page of runs
    with django_assert_num_queries(9):
        client.get(reverse("runs:list"))
    bulk_runs(agent.agent, 45)
    with django_assert_num_queries(9):
        response = client.get(reverse("runs:list"), {"status": "running", "q": "task"})
    assert len(response.context["runs"]) == 50


def test_the_live_fragment_renders_only_the_table(oncall, agent, start_run):
    run = start_run()
    response = logged_in(oncall).get(
        reverse("runs:list"), {"fragment": "rows"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="runs-table"')
    assert f'id="run-{run["id"]}"' in body
    assert "<html" not in body


# --- the detail -------------------------------------------------------------------------------


def test_the_detail_shows_the_trace_meters_policy_and_explained_stop(
    oncall, agent, start_run, publish_policy
):
    run = start_run(task="look something up")
    agent.api.post_json(
        f"/api/v1/runs/{run['id']}/steps",
        {
            "kind": "llm",
            "model": "m-1",
            "tokens_in": 100,
            "tokens_out": 20,
            "usd": "0.01",
            "latency_ms": 300,
        },
    )
    call = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": "refunds"}}
    ).json()
    agent.api.post_json(
        f"/api/v1/tool-calls/{call['id']}/result", {"ok": True, "output": {"text": "x" * 2000}}
    )
    agent.api.post_json(f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "shell.exec", "args": {}})

    response = logged_in(oncall).get(reverse("runs:detail", args=[run["id"]]))
    page = response.content.decode()
    assert response.status_code == 200
    for kind in ["run_started", "step", "tool_call", "tool_result", "stop"]:
        assert f"kind-{kind}" in page
    assert "120 / 30" not in page  # tokens have no budget here
    assert "1 / 30" in page  # steps against max_steps 30
    assert "tool_denied:shell.exec" in page
    assert "not on its allowlist" in page  # the explanation in plain words
    assert "What to do" in page
    assert f'href="{reverse("policy:version", args=[1])}"' in page
    # A large output is folded away behind its size; small arguments are shown inline.
    assert "<summary>output · 2.0 kB</summary>" in page
    assert "&quot;q&quot;: &quot;refunds&quot;" in page
    # The run has ended: no stop button.
    assert "Stop this run" not in page


def test_a_long_trace_is_paged_by_event_id(oncall, agent, start_run):
    run = start_run()
    run_row = Run.objects.get(pk=run["id"])
    TraceEvent.objects.bulk_create(
        TraceEvent(run=run_row, kind="step", data={"model": f"m{i}", "counted": True})
        for i in range(150)
    )
    client = logged_in(oncall)
    first = client.get(reverse("runs:detail", args=[run["id"]]))
    assert len(first.context["events"]) == 100
    assert first.context["more_after"]
    last_id = first.context["last_event_id"]
    rest = client.get(
        reverse("runs:detail", args=[run["id"]]),
        {"after": last_id, "fragment": "events"},
        HTTP_HX_REQUEST="true",
    )
    assert len(rest.context["events"]) == 51
    assert "<html" not in rest.content.decode()
    assert 'id="timeline-tail"' in rest.content.decode()
    latest = client.get(reverse("runs:detail", args=[run["id"]]), {"latest": "1"})
    assert (
        latest.context["events"][-1].pk
        == TraceEvent.objects.filter(run_id=run["id"]).latest("id").pk
    )
    assert latest.context["more_before"]


def test_an_unknown_run_is_a_404(oncall):
    assert logged_in(oncall).get(reverse("runs:detail", args=[999999])).status_code == 404


# --- stopping a run ---------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["oncall", "reviewer", "admin"])
def test_on_call_and_up_stop_a_run_and_the_agent_sees_cancelled(request, persona, agent, start_run):
    person = request.getfixturevalue(persona)
    run = start_run()
    client = logged_in(person)
    assert b"Stop this run" in client.get(reverse("runs:detail", args=[run["id"]])).content
    response = client.post(reverse("runs:cancel", args=[run["id"]]), {"reason": "looping"})
    assert response.status_code == 302
    assert response["Location"] == reverse("runs:detail", args=[run["id"]])
    row = Run.objects.get(pk=run["id"])
    assert (row.status, row.stop_reason) == (RunStatus.STOPPED, "cancelled")
    entry = AuditEntry.objects.get(action="run.cancel")
    assert entry.actor == f"user:{person.user.username}"
    assert entry.reason == "looping"
    decision = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    ).json()
    assert (decision["decision"], decision["stop_reason"]) == ("stop", "cancelled")


def test_stopping_in_place_with_htmx_returns_the_new_header(oncall, start_run):
    run = start_run()
    response = logged_in(oncall).post(
        reverse("runs:cancel", args=[run["id"]]), HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="run-header"')
    assert "cancelled" in body
    assert "Stop this run" not in body


def test_stopping_a_run_twice_says_it_already_ended(oncall, start_run):
    run = start_run()
    client = logged_in(oncall)
    client.post(reverse("runs:cancel", args=[run["id"]]))
    response = client.post(reverse("runs:cancel", args=[run["id"]]), follow=True)
    assert b"already ended" in response.content
    assert AuditEntry.objects.filter(action="run.cancel").count() == 1
    htmx = client.post(reverse("runs:cancel", args=[run["id"]]), HTTP_HX_REQUEST="true")
    assert htmx.status_code == 409


def test_people_without_a_role_cannot_stop_a_run(outsider, start_run):
    run = start_run()
    response = logged_in(outsider).post(reverse("runs:cancel", args=[run["id"]]))
    assert response.status_code == 403
    assert Run.objects.get(pk=run["id"]).status == RunStatus.RUNNING


def test_anonymous_people_cannot_stop_a_run(db, start_run):
    run = start_run()
    response = Client().post(reverse("runs:cancel", args=[run["id"]]))
    assert response.status_code == 302
    assert Run.objects.get(pk=run["id"]).status == RunStatus.RUNNING


def test_stopping_needs_a_post(oncall, start_run):
    run = start_run()
    assert logged_in(oncall).get(reverse("runs:cancel", args=[run["id"]])).status_code == 405
    assert Run.objects.get(pk=run["id"]).status == RunStatus.RUNNING


def test_stopping_an_unknown_run_is_a_404(oncall):
    assert logged_in(oncall).post(reverse("runs:cancel", args=[999999])).status_code == 404


# --- overview ---------------------------------------------------------------------------------


def test_the_overview_shows_running_runs_pending_approvals_switch_and_stops(
    oncall, agent, outsider_agent, start_run
):
    running = start_run(task="still going")
    stopped = start_run(outsider_agent)
    outsider_agent.api.post_json(
        f"/api/v1/runs/{stopped['id']}/tool-calls", {"tool": "shell.exec", "args": {}}
    )
    page = logged_in(oncall).get(reverse("overview")).content.decode()
    assert f'href="{reverse("runs:detail", args=[running["id"]])}"' in page
    assert "<code>tool_denied</code>" in page
    assert "other-bot" in page.split("most stops")[1]
    assert "Nothing waits for a reviewer" in page
    assert Run.objects.count() == 2


def test_the_overview_fragment_refreshes_alone(oncall):
    response = logged_in(oncall).get(reverse("overview"), HTTP_HX_REQUEST="true")
    assert response.content.decode().lstrip().startswith('<div id="overview-stats"')
