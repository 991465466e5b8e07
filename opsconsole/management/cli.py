"""Small shared pieces of the management commands: who acts, and how service errors read."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from opsconsole.errors import ServiceError

CLI_ACTOR = "system:cli"


def add_actor_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--actor",
        metavar="NAME",
        help=(
            f"Who to record in the audit log (default {CLI_ACTOR}); "
            "a bare name is recorded as user:NAME."
        ),
    )


def actor_from(options: dict[str, Any]) -> str:
    name = (options.get("actor") or "").strip()
    if not name:
        return CLI_ACTOR
    return name if ":" in name else f"user:{name}"


def service_error_text(exc: ServiceError) -> str:
    detail = exc.detail
    if isinstance(detail, list | tuple):
        return "\n".join(f"  - {item}" for item in detail)
    return str(detail)
