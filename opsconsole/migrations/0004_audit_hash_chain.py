"""The audit log becomes hash-chained and append-only.

Existing rows are chained in id order, then triggers refuse UPDATE and DELETE of audit rows:
on PostgreSQL both (TRUNCATE, which test flushes use, is left to database privileges); on SQLite
UPDATE only, because Django's flush empties SQLite tables with DELETE (tests would break), and a
removed row is still found by ``verify_audit`` (broken links, or a chain head that expects more
rows; since 0006 SQLite refuses DELETE too, except inside the flush command). Note for later
migrations: on SQLite, altering this table rebuilds it and drops its
triggers; such a migration must run ``create_triggers`` again.
"""

import django.utils.timezone
from django.db import migrations, models

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION opsconsole_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % of audit rows is refused', TG_OP;
END;
$$ LANGUAGE plpgsql
"""
PG_TRIGGER = """
CREATE TRIGGER opsconsole_audit_append_only
BEFORE UPDATE OR DELETE ON opsconsole_auditentry
FOR EACH ROW EXECUTE FUNCTION opsconsole_audit_append_only()
"""
SQLITE_TRIGGER = """
CREATE TRIGGER opsconsole_audit_no_update
BEFORE UPDATE ON opsconsole_auditentry
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE of audit rows is refused');
END
"""


def create_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FUNCTION, params=None)
        schema_editor.execute(PG_TRIGGER)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE_TRIGGER)


def drop_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(
            "DROP TRIGGER IF EXISTS opsconsole_audit_append_only ON opsconsole_auditentry"
        )
        schema_editor.execute("DROP FUNCTION IF EXISTS opsconsole_audit_append_only()")
    elif vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS opsconsole_audit_no_update")


def chain_existing_rows(apps, schema_editor):
    from opsconsole.audit import HASHED_FIELDS, entry_hash

    AuditEntry = apps.get_model("opsconsole", "AuditEntry")
    AuditChainHead = apps.get_model("opsconsole", "AuditChainHead")
    previous, last_id, length = "", None, 0
    for entry in AuditEntry.objects.order_by("pk").iterator():
        digest = entry_hash(
            prev_hash=previous, **{name: getattr(entry, name) for name in HASHED_FIELDS}
        )
        AuditEntry.objects.filter(pk=entry.pk).update(prev_hash=previous, hash=digest)
        previous, last_id, length = digest, entry.pk, length + 1
    AuditChainHead.objects.update_or_create(
        pk=1, defaults={"last_hash": previous, "last_entry_id": last_id, "length": length}
    )


class Migration(migrations.Migration):
    dependencies = [
        ("opsconsole", "0003_webhooks"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditChainHead",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("last_hash", models.CharField(blank=True, max_length=64)),
                ("last_entry_id", models.BigIntegerField(blank=True, null=True)),
                ("length", models.PositiveBigIntegerField(default=0)),
            ],
        ),
        migrations.AddField(
            model_name="auditentry",
            name="hash",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="auditentry",
            name="prev_hash",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="at",
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now),
        ),
        migrations.RunPython(chain_existing_rows, migrations.RunPython.noop),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
