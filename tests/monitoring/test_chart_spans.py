"""The dashboard's span fits the data unless one is chosen; older data is pointed at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.monitoring import rollups as monitoring
from tests.monitoring.test_rollups import finished_run

LABEL = "%d %H:00"


def _rolled_up_at(agent, *moments: datetime) -> None:
    for moment in moments:
        finished_run(agent.agent, ended_at=moment)
        monitoring.rollups_compute(now=moment)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


@pytest.mark.django_db
def test_the_default_span_starts_at_the_first_bucket_with_data(agent, oncall, client):
    now = datetime.now(UTC)
    _rolled_up_at(agent, now - timedelta(hours=9), now)
    client.force_login(oncall.user)

    response = client.get("/monitoring/?agent=support-bot")

    buckets = response.context["board"].buckets
    assert len(buckets) == 10
    assert buckets[0] == _hour(now - timedelta(hours=9)) and buckets[-1] == _hour(now)
    page = response.content.decode()
    first_label = f">{buckets[0].strftime(LABEL)}</text>"
    assert first_label in page
    assert "the data is older" not in page


@pytest.mark.django_db
def test_data_in_the_last_three_hours_draws_a_few_buckets_not_48(agent, oncall, client):
    now = datetime.now(UTC)
    _rolled_up_at(agent, now - timedelta(hours=2), now - timedelta(hours=1), now)
    client.force_login(oncall.user)

    response = client.get("/monitoring/?agent=support-bot")

    board = response.context["board"]
    assert len(board.buckets) == 6  # 3 hours of data, padded to the minimum (not 48)
    assert board.buckets[-1] == _hour(now)
    assert _hour(now - timedelta(hours=2)) in board.buckets
    assert sum(1 for row in board.series[0][1] if row) == 3
    assert 'option value="" selected' in response.content.decode()  # "fit the data"


@pytest.mark.django_db
def test_data_older_than_the_default_span_is_pointed_at(agent, oncall, client):
    old = datetime.now(UTC) - timedelta(hours=60)
    _rolled_up_at(agent, old)
    client.force_login(oncall.user)

    response = client.get("/monitoring/?agent=support-bot")

    board = response.context["board"]
    assert len(board.buckets) == 48
    assert all(row is None for _, rows in board.series for row in rows)
    page = response.content.decode()
    assert "the data is older" in page
    assert "?agent=support-bot&amp;size=hour&amp;buckets=90" in page

    followed = client.get("/monitoring/?agent=support-bot&size=hour&buckets=90")
    shown = followed.context["board"]
    assert _hour(old) in shown.buckets
    assert any(row for _, rows in shown.series for row in rows)
    assert "the data is older" not in followed.content.decode()


@pytest.mark.django_db
def test_an_explicit_span_is_kept(agent, oncall, client):
    now = datetime.now(UTC)
    _rolled_up_at(agent, now - timedelta(hours=2), now)
    client.force_login(oncall.user)

    for span in (24, 168):
        response = client.get(f"/monitoring/?agent=support-bot&buckets={span}")
        assert len(response.context["board"].buckets) == span
        assert f'option value="{span}" selected' in response.content.decode()


@pytest.mark.django_db
def test_a_chosen_span_without_data_is_kept_and_points_at_the_older_data(agent, oncall, client):
    _rolled_up_at(agent, datetime.now(UTC) - timedelta(hours=30))
    client.force_login(oncall.user)

    response = client.get("/monitoring/?agent=support-bot&buckets=24")

    assert len(response.context["board"].buckets) == 24
    page = response.content.decode()
    assert 'option value="24" selected' in page
    assert "the data is older" in page
    assert "?agent=support-bot&amp;buckets=48" in page
