from __future__ import annotations

from django.apps import AppConfig


class OpsconsoleConfig(AppConfig):
    name = "opsconsole"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out
        from django.db.backends.signals import connection_created

        from opsconsole import schema  # noqa: F401 - registers the OpenAPI auth extension
        from opsconsole.audit import register_sqlite_functions
        from opsconsole.live import close_sockets_at_logout

        connection_created.connect(register_sqlite_functions, dispatch_uid="opsconsole-audit")
        user_logged_out.connect(close_sockets_at_logout, dispatch_uid="opsconsole-sockets-logout")
