"""An index for the runs list's "most expensive first" order at a million runs.

``run_cost_list_idx`` on ``(usd DESC, id DESC)``: the order and the keyset cursor of that list
(``AmountCursor``), so each page, the thousandth as the first, reads its 51 rows from the index
instead of sorting every run. The gateway already rewrites a run's row on each counted call (its
``last_activity_at`` is in ``run_active_idx``, so those updates are not HOT), so one more index
costs an index entry per update, not a change from HOT to non-HOT writes.

PostgreSQL only, like ``0005_run_list_indexes`` (the embedded default's scale does not need it),
so it lives outside the model state and ``makemigrations`` does not see it. Built
``CONCURRENTLY`` (hence ``atomic = False``): the runs table keeps taking writes.
"""

from django.db import migrations

NAME = "run_cost_list_idx"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {NAME} ON agents_run (usd DESC, id DESC)"
    )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("agents", "0009_run_waiting_time_counter_bounds"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
