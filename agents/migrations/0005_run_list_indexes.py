"""Runs list indexes for PostgreSQL at a million runs (see docs/performance.md).

- ``run_task_trgm_idx``, a pg_trgm GIN index on ``UPPER(task)``: the runs page searches tasks
  with ``icontains``, which Django turns into ``UPPER(task::text) LIKE UPPER('%term%')``; without
  it every search reads every run (0.8 s at a million runs). ``ANALYZE`` afterwards gives the
  planner statistics on the expression, so a common term still uses the list index (its first
  page is found at once) while a rare one uses the trigrams.
- ``run_agent_status_list_idx`` on ``(agent, status, started_at DESC, id DESC)``: an agent +
  status filter (with or without a stop reason) reads that agent's runs of that status in list
  order. Without it PostgreSQL intersects the agent's bitmap with the bitmap of every run in the
  status (300,000 stopped runs, about 40 ms at a million runs, growing with the table).

PostgreSQL only (SQLite has no trigram indexes, and the embedded default's scale needs neither),
so both live outside the model state and ``makemigrations`` does not see them. Built
``CONCURRENTLY`` (hence ``atomic = False``): a large runs table keeps taking writes meanwhile.
"""

from django.db import migrations

INDEXES = {
    "run_task_trgm_idx": "USING gin (UPPER(task) gin_trgm_ops)",
    "run_agent_status_list_idx": "(agent_id, status, started_at DESC, id DESC)",
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, definition in INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON agents_run {definition}"
        )
    # Statistics on the indexed expression: the planner's choice between the indexes needs them,
    # and autovacuum would only gather them after a tenth of the table has changed.
    schema_editor.execute("ANALYZE agents_run")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # The extension stays: something else may use it by now.
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("agents", "0004_toolcall_result_hash"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
