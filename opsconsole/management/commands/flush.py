"""``manage.py flush``, Django's, allowed to empty the audit log on SQLite.

SQLite has no TRUNCATE, so flush empties tables with DELETE, which the audit log's trigger refuses
(migration 0006). Emptying the whole database is the one deletion the console allows, as TRUNCATE
is on PostgreSQL; the test suite flushes between transactional tests through this command.
"""

from __future__ import annotations

from django.core.management.commands.flush import Command as DjangoFlushCommand

from opsconsole.audit import deletion_allowed


class Command(DjangoFlushCommand):
    def handle(self, **options):
        with deletion_allowed():
            return super().handle(**options)
