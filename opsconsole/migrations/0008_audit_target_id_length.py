"""The audit row's ``target_id`` holds any target's name: agent names run to 100 characters and
tool names to 128, which overflowed its 64 on PostgreSQL (SQLite does not enforce lengths).

Altering the table on SQLite rebuilds it and drops its triggers (0004's and 0006's notes): they
are created again here, so the audit log stays append-only.
"""

import importlib

from django.db import migrations, models

NO_UPDATE = importlib.import_module("opsconsole.migrations.0004_audit_hash_chain").SQLITE_TRIGGER
NO_DELETE = importlib.import_module(
    "opsconsole.migrations.0006_audit_no_delete_on_sqlite"
).SQLITE_TRIGGER


def sqlite_triggers_again(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS opsconsole_audit_no_update")
        schema_editor.execute("DROP TRIGGER IF EXISTS opsconsole_audit_no_delete")
        schema_editor.execute(NO_UPDATE)
        schema_editor.execute(NO_DELETE)


class Migration(migrations.Migration):
    dependencies = [("opsconsole", "0007_killswitch_moves_to_agents")]

    operations = [
        migrations.AlterField(
            model_name="auditentry",
            name="target_id",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.RunPython(sqlite_triggers_again, sqlite_triggers_again, elidable=False),
    ]
