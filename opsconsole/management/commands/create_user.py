"""``manage.py create_user NAME --role ROLE``: a person with a password and an API token."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from opsconsole import roles
from opsconsole.audit import audit_record
from opsconsole.management.cli import actor_from, add_actor_argument
from opsconsole.models import UserToken
from opsconsole.services import user_token_issue


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
        user_model = get_user_model()
        name: str = options["name"]
        role: str = options["role"]
        email: str = options["email"].strip()
        try:
            user_model.username_validator(name)
        except ValidationError as exc:
            raise CommandError(
                f"{name!r} is not a valid username: {' '.join(exc.messages)}"
            ) from None
        if email:
            try:
                validate_email(email)
            except ValidationError:
                raise CommandError(f"{email!r} is not a valid email address.") from None
        actor = actor_from(options)
        password = secrets.token_urlsafe(24)

        with transaction.atomic():
            user = user_model.objects.select_for_update().filter(username=name).first()
            if user is None and options["reset"]:
                raise CommandError(f"There is no user {name!r} to reset; drop --reset to create.")
            if user is not None and not options["reset"]:
                raise CommandError(
                    f"A user named {name!r} already exists; use --reset to give it a new "
                    "password, a new token and this role."
                )
            revoked = 0
            if user is None:
                user = user_model.objects.create_user(username=name, email=email, password=password)
                before = None
                action = "user.create"
            else:
                before = {"role": roles.role_of(user), "email": user.email}
                user.set_password(password)
                if email:
                    user.email = email
                user.save()
                revoked = UserToken.objects.filter(user=user, revoked_at__isnull=True).update(
                    revoked_at=timezone.now()
                )
                action = "user.reset"
            set_role(user, role)
            audit_record(
                actor=actor,
                action=action,
                target_type="user",
                target_id=name,
                before=before,
                after={"role": role, "email": user.email, "tokens_revoked": revoked},
            )
            token, raw_token = user_token_issue(user=user, actor=actor, label="cli")

        verb = "Created" if action == "user.create" else "Reset"
        self.stdout.write(self.style.SUCCESS(f"{verb} user {name} with the {role} role."))
        if revoked:
            self.stdout.write(f"Revoked {revoked} earlier API token{'s' if revoked != 1 else ''}.")
        if not user.is_active:
            self.stderr.write(self.style.WARNING(f"Warning: {name} is inactive and cannot log in."))
        self.stdout.write(f"Password:  {password}")
        self.stdout.write(f"API token: {raw_token}")
        self.stdout.write(
            self.style.WARNING(
                "Store them now: they will not be shown again (only hashes are kept)."
            )
        )


def set_role(user: AbstractUser, role: str) -> None:
    """One role group per person; the roles nest, so the highest one is all they need."""
    roles.ensure_groups()
    user.groups.remove(*Group.objects.filter(name__in=roles.ROLES))
    user.groups.add(Group.objects.get(name=role))
    user.__dict__.pop("_opsconsole_rank", None)
