"""A bucket of runs each near its spending cap still rolls up: sums are bounded by their column."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from agents.models import MetricRollup, Run
from agents.monitoring.rollups import ROLLUP_USD_MAX, rollups_compute

pytestmark = pytest.mark.django_db


def test_runs_near_their_cap_roll_up_with_the_sum_held_at_the_columns_maximum(agent):
    now = datetime.now(UTC)
    Run.objects.bulk_create(
        Run(
            agent=agent.agent,
            task=f"big spender {index}",
            status="stopped",
            stop_reason="max_usd",
            usd=Decimal("999999.999999"),
            started_at=now,
            last_activity_at=now,
            ended_at=now,
            policy_version=1,
        )
        for index in range(150)
    )

    written = rollups_compute(now=now)["rollups"]

    assert written > 0
    row = MetricRollup.objects.filter(size="hour", agent=agent.agent).get(agent_version="*")
    assert row.runs == 150
    assert row.usd_sum == ROLLUP_USD_MAX
