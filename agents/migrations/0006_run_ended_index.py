"""An index for the overview page's counts at a million runs (see docs/performance.md).

``run_ended_idx`` on ``(ended_at) INCLUDE (stop_reason, status, agent_id)``: the overview counts
the runs that ended in the last hour and day by stop reason, and the agents with the most stops in
the last day. Without an index on ``ended_at`` each of those is a scan of every run (90 ms each at
a million runs, growing with the table); with it they read one day of runs from the index alone.

PostgreSQL only, like ``0005_run_list_indexes`` (SQLite has no ``INCLUDE`` and the embedded
default's scale does not need it), so it lives outside the model state and ``makemigrations`` does
not see it. Built ``CONCURRENTLY`` (hence ``atomic = False``): the runs table keeps taking writes.
"""

from django.db import migrations

NAME = "run_ended_idx"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {NAME} ON agents_run (ended_at) "
        "INCLUDE (stop_reason, status, agent_id)"
    )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("agents", "0005_run_list_indexes"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
