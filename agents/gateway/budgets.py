"""Budgets: what a run may spend (the smaller of what it asked and the policy ceiling) and the
80 % notices as usage crosses them. Enforcement itself is in decisions.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from agents.models import (
    BIGINT_COLUMN_MAX,
    INT_COLUMN_MAX,
    USD_COLUMN_MAX,
    Run,
)
from agents.policy.document import BUDGET_NAMES
from opsconsole.notifications import notify

# What each budget's column holds: a larger ceiling (a policy may say 10**12 steps) is stored as
# this, which no counter can pass anyway (decisions.py bounds the counters by their columns).
_COLUMN_MAX: dict[str, Any] = {
    "max_steps": INT_COLUMN_MAX,
    "max_seconds": INT_COLUMN_MAX,
    "max_tool_calls": INT_COLUMN_MAX,
    "max_usd": USD_COLUMN_MAX,
    "max_tokens": BIGINT_COLUMN_MAX,
}


def effective_budgets(requested: dict[str, Any], ceilings: dict[str, Any]) -> dict[str, Any]:
    """The smaller of what the run asked for and the policy ceiling; None is no limit."""
    result = {}
    for name in BUDGET_NAMES:
        asked, ceiling = requested.get(name), ceilings.get(name)
        values = [v for v in (asked, ceiling) if v is not None]
        value = min(values) if values else None
        if name == "max_usd" and value is not None:
            value = Decimal(str(value))
        if value is not None:
            value = min(value, _COLUMN_MAX[name])
        result[name] = value
    return result


BUDGET_WARNING_FRACTION = 0.8


_COUNTERS = {
    "max_steps": "steps",
    "max_tool_calls": "tool_calls",
    "max_tokens": "tokens",
    "max_usd": "usd",
}


def usage_fractions(run: Run) -> dict[str, float]:
    fractions = {}
    for budget, counter in _COUNTERS.items():
        limit = getattr(run, budget)
        if limit:
            fractions[budget] = float(getattr(run, counter)) / float(limit)
    if run.max_seconds:
        fractions["max_seconds"] = run.seconds / run.max_seconds
    return fractions


def budget_crossings_notify(run: Run, before: dict[str, float]) -> None:
    """Notify once per run and budget when usage crosses 80 % of it."""
    after = usage_fractions(run)
    for budget, fraction in after.items():
        if fraction >= BUDGET_WARNING_FRACTION > before.get(budget, 0.0):
            notify(
                event="budget.crossed_80",
                key=f"run:{run.pk}:{budget}:80",
                payload={
                    "run": run.pk,
                    "agent": run.agent.name,
                    "budget": budget,
                    "fraction": round(fraction, 3),
                    "usage": run.usage(),
                    "budgets": run.budgets(),
                },
            )
