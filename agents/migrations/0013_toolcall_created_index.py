"""An index for the overview's load ranking: the last hour's tool calls by ``created_at``.

``toolcall_created_idx`` on ``(created_at)``: ``load_ranking`` (agents/runs/selectors.py) reads
only the calls of the last hour, which this index finds without scanning every call ever made;
the gateway inserts calls in time order, so new entries land on the index's right edge.

Outside the model state, like ``0010_run_cost_list_index`` (so ``makemigrations`` does not see
it). Built ``CONCURRENTLY`` on PostgreSQL (hence ``atomic = False``): the tool-call table keeps
taking writes; a plain index on the embedded default (SQLite).
"""

from django.db import migrations

NAME = "toolcall_created_idx"


def create(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX {concurrently}IF NOT EXISTS {NAME} ON agents_toolcall (created_at)"
    )


def drop(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("agents", "0012_toolbreaker_forced"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
