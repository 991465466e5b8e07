"""Runs' updates can be HOT: the index ``run_active_idx`` on ``last_activity_at`` goes (issue 11).

Every gateway decision updates its run's counters and ``last_activity_at``. An update that
changes an indexed column is never HOT (heap-only): PostgreSQL writes a new entry into every index
of ``agents_run`` (seven of them) instead of none. No query reads ``run_active_idx``: the reaper
selects running runs by ``status`` (``run_status_list_idx``) and compares times in Python, and the
observed runs' finalize sweep filters running OTLP runs, which ``run_status_list_idx`` narrows to
the few running ones. A decision of a tool with no cost now changes no indexed column.

``agents_run`` also gets ``fillfactor = 90`` on PostgreSQL: a HOT update needs room for the new
row version on the same page, and a full page (the default, 100) sends it elsewhere.

The index is dropped ``CONCURRENTLY`` on PostgreSQL, so the table keeps taking writes.
"""

from django.db import migrations


def _concurrently(schema_editor) -> str:
    return "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""


def drop_index(apps, schema_editor):
    schema_editor.execute(f"DROP INDEX {_concurrently(schema_editor)}IF EXISTS run_active_idx")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE agents_run SET (fillfactor = 90)")


def create_index(apps, schema_editor):
    where = "WHERE status IN ('running', 'waiting_approval')"
    schema_editor.execute(
        f"CREATE INDEX {_concurrently(schema_editor)}IF NOT EXISTS run_active_idx "
        f"ON agents_run (last_activity_at) {where}"
    )
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE agents_run RESET (fillfactor)")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("agents", "0013_toolcall_created_index")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop_index, create_index)],
            state_operations=[
                migrations.RemoveIndex(model_name="run", name="run_active_idx"),
            ],
        ),
    ]
