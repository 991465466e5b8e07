"""``manage.py export_policy [--version N]``: a policy version as YAML that imports back as is."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.models import PolicyVersion
from agents.policy.document import dump_yaml


class Command(BaseCommand):
    help = (
        "Print the current (or a given) policy version as normalised YAML, every default "
        "filled in; 'import_policy' reads it back to the same policy."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # Our --version (a policy version) replaces Django's --version (the Django release).
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--version",
            type=positive_int,
            metavar="N",
            help="The policy version to export (default: the current one).",
        )
        parser.add_argument(
            "--output", metavar="FILE", help="Write to FILE instead of standard output."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        number: int | None = options["version"]
        versions = PolicyVersion.objects.all()
        row = (
            versions.filter(number=number).first()
            if number is not None
            else versions.order_by("-number").first()
        )
        if row is None:
            if number is not None:
                raise CommandError(f"There is no policy version {number}.")
            raise CommandError("No policy has been loaded yet; run 'manage.py migrate'.")

        reason = " ".join(row.reason.split()) or "no reason given"
        header = (
            f"# policy v{row.number} by {row.author} at {row.created_at:%Y-%m-%d %H:%M:%S %Z}: "
            f"{reason}\n"
        )
        text = header + dump_yaml(row.document)
        output: str | None = options["output"]
        if not output:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {output}: {exc.strerror or exc}") from None
        self.stdout.write(f"Wrote policy v{row.number} to {output}.")


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a version number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("version numbers start at 1")
    return number
