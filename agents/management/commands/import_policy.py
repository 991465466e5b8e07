"""``manage.py import_policy FILE``: publish a policy YAML file as the new version."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.policy.document import PolicyError, normalise, parse_yaml
from agents.policy.selectors import policy_current
from agents.policy.services import policy_publish
from opsconsole.errors import ServiceError
from opsconsole.management.cli import actor_from, add_actor_argument, service_error_text


class Command(BaseCommand):
    help = (
        "Validate a policy YAML file and publish it as a new policy version. Every problem is "
        "listed and nothing changes when it is invalid. The format is in docs/policy.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="The YAML file to import, or - for standard input.")
        parser.add_argument("--reason", default="", help="Why (recorded with the version).")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Publish a new version even when it says the same as the current one.",
        )
        add_actor_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        source: str = options["file"]
        text = self._read(source)
        label = "standard input" if source == "-" else source
        try:
            raw = parse_yaml(text)
            document = normalise(raw)
        except PolicyError as exc:
            raise invalid_policy(label, exc.errors) from None

        try:
            current = policy_current()
        except ServiceError:
            current = None  # no policy yet: anything valid is a change
        if current is not None and current.document == document and not options["force"]:
            self.stdout.write(
                f"Unchanged: {label} says the same as the current policy v{current.version}; "
                "no new version was created (use --force to publish one anyway)."
            )
            return

        reason = options["reason"].strip() or f"imported from {label}"
        try:
            version = policy_publish(document=raw, author=actor_from(options), reason=reason)
        except ServiceError as exc:
            # normalise() passed above, so this is unexpected; still, nothing was saved.
            raise CommandError(f"{label} was not published:\n{service_error_text(exc)}") from None
        self.stdout.write(self.style.SUCCESS(f"Published policy version {version.number}."))

    def _read(self, source: str) -> str:
        if source == "-":
            return sys.stdin.read()
        try:
            return Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CommandError(f"No such file: {source}") from None
        except UnicodeDecodeError:
            raise CommandError(f"{source} is not UTF-8 text.") from None
        except OSError as exc:
            raise CommandError(f"Cannot read {source}: {exc.strerror or exc}") from None


def invalid_policy(label: str, errors: list[str]) -> CommandError:
    count = len(errors)
    listing = "\n".join(f"  - {error}" for error in errors)
    return CommandError(
        f"{label} is not a valid policy; nothing was changed. "
        f"{count} problem{'s' if count != 1 else ''}:\n{listing}"
    )
