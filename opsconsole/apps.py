from __future__ import annotations

from django.apps import AppConfig


class OpsconsoleConfig(AppConfig):
    name = "opsconsole"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from opsconsole import schema  # noqa: F401 - registers the OpenAPI auth extension
        from opsconsole.audit import register_sqlite_functions

        connection_created.connect(register_sqlite_functions, dispatch_uid="opsconsole-audit")
