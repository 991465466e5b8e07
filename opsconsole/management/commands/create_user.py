"""``manage.py create_user NAME --role ROLE``: a person with a password and an API token."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from opsconsole import roles
from opsconsole.errors import Conflict, NotFound, ServiceError
from opsconsole.management.cli import actor_from, add_actor_argument, service_error_text
from opsconsole.services import user_create


class Command(BaseCommand):
    help = (
        "Create a console user in one role (oncall < reviewer < admin) with a generated "
        "password and an API token, both printed once. --reset gives an existing user a new "
        "password, a new token (earlier tokens are revoked) and the role."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The username.")
        parser.add_argument("--role", required=True, choices=roles.ROLES)
        parser.add_argument("--email", default="", help="The user's email address.")
        parser.add_argument(
            "--reset",
            action="store_true",
            help="The user exists: set a new password and token, and the role.",
        )
        add_actor_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        role: str = options["role"]
        try:
            credentials = user_create(
                username=name,
                role=role,
                actor=actor_from(options),
                email=options["email"].strip(),
                reset=options["reset"],
            )
        except Conflict:
            raise CommandError(
                f"A user named {name!r} already exists; use --reset to give it a new "
                "password, a new token and this role."
            ) from None
        except NotFound:
            raise CommandError(
                f"There is no user {name!r} to reset; drop --reset to create."
            ) from None
        except ServiceError as exc:
            raise CommandError(service_error_text(exc)) from None

        verb = "Created" if credentials.created else "Reset"
        self.stdout.write(self.style.SUCCESS(f"{verb} user {name} with the {role} role."))
        revoked = credentials.tokens_revoked
        if revoked:
            self.stdout.write(f"Revoked {revoked} earlier API token{'s' if revoked != 1 else ''}.")
        if not credentials.user.is_active:
            self.stderr.write(self.style.WARNING(f"Warning: {name} is inactive and cannot log in."))
        self.stdout.write(f"Password:  {credentials.password}")
        self.stdout.write(f"API token: {credentials.token}")
        self.stdout.write(
            self.style.WARNING(
                "Store them now: they will not be shown again (only hashes are kept)."
            )
        )
