from __future__ import annotations

from django.apps import AppConfig


class OpsconsoleConfig(AppConfig):
    name = "opsconsole"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from opsconsole import schema  # noqa: F401 - registers the OpenAPI auth extension
