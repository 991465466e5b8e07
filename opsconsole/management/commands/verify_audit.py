"""``manage.py verify_audit``: walk the audit chain; exit 1 naming the first tampered row."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from opsconsole.audit import verify_chain


def _guard_present() -> bool | None:
    """Whether the append-only triggers exist (None: this database has no such guard)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT 1 FROM pg_trigger WHERE tgname = 'opsconsole_audit_append_only' "
                "AND tgenabled <> 'D'"
            )
        elif connection.vendor == "sqlite":
            cursor.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                "AND name IN ('opsconsole_audit_no_update', 'opsconsole_audit_no_delete') "
                "HAVING count(*) = 2"
            )
        else:
            return None
        return cursor.fetchone() is not None


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exit status 1 and the first bad row if tampered."

    def handle(self, *args, **options) -> None:
        report = verify_chain()
        if not report.ok:
            where = f"row {report.first_bad_id}" if report.first_bad_id is not None else "the log"
            raise CommandError(
                f"audit chain broken at {where}: {report.problem} "
                f"({report.checked} rows before it verified)"
            )
        if _guard_present() is False:
            self.stderr.write(
                self.style.WARNING(
                    "warning: the append-only trigger on the audit table is missing or disabled"
                )
            )
        self.stdout.write(self.style.SUCCESS(f"audit chain intact: {report.checked} rows"))
