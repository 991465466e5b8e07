"""On SQLite the audit log now refuses DELETE too (PostgreSQL has refused it since 0004).

0004 left DELETE alone on SQLite because Django's flush empties SQLite tables with DELETE. The
trigger below refuses it unless ``opsconsole_audit_unlocked()`` answers 1: a SQL function the
console registers on its own connections, which answers 1 only while the flush command runs
(``opsconsole.audit.deletion_allowed``). Outside the console the function does not exist, so a
DELETE from the sqlite3 shell fails as well. Like 0004's: altering this table on SQLite rebuilds it
and drops its triggers; such a migration must create them again.
"""

from django.db import migrations

SQLITE_TRIGGER = """
CREATE TRIGGER opsconsole_audit_no_delete
BEFORE DELETE ON opsconsole_auditentry
WHEN opsconsole_audit_unlocked() = 0
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: DELETE of audit rows is refused');
END
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE_TRIGGER)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS opsconsole_audit_no_delete")


class Migration(migrations.Migration):
    dependencies = [
        ("opsconsole", "0005_sweep_heartbeat"),
    ]

    operations = [migrations.RunPython(create_trigger, drop_trigger, elidable=False)]
