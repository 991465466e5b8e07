"""Export runs and their traces as JSON Lines or CSV, streamed to a file or stdout.

    manage.py export_runs --format jsonl --since 2026-03-01 --agent support-bot --output runs.jsonl

The filters are the runs list's (same names as its query string).
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.monitoring.exports import FORMATS, runs_export
from agents.runs.forms import RunFilterForm


class Command(BaseCommand):
    help = "Export runs and their traces as JSON Lines or CSV."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=FORMATS, default="jsonl")
        parser.add_argument("--since", help="runs started at or after (ISO date or date-time, UTC)")
        parser.add_argument("--until", help="runs started before (ISO date or date-time, UTC)")
        parser.add_argument("--agent", help="one agent's name")
        parser.add_argument(
            "--status", help="running, waiting_approval, succeeded, failed, stopped"
        )
        parser.add_argument("--stop-reason", help="a stop reason or its kind (tool_denied)")
        parser.add_argument("--output", help="a file to write (default: standard output)")

    def handle(self, *args, **options) -> None:
        form = RunFilterForm(
            {
                name: options[option] or ""
                for name, option in (
                    ("since", "since"),
                    ("until", "until"),
                    ("agent", "agent"),
                    ("status", "status"),
                    ("stop_reason", "stop_reason"),
                )
            }
        )
        if not form.is_valid():
            problems = "; ".join(
                f"{field}: {' '.join(errors)}" for field, errors in form.errors.items()
            )
            raise CommandError(f"Bad filter: {problems}")
        chunks = runs_export(format=options["format"], filters=form.selector_filters())
        if options["output"]:
            with Path(options["output"]).open("w", encoding="utf-8", newline="") as out:
                out.writelines(chunks)
        else:
            for chunk in chunks:
                self.stdout.write(chunk, ending="")
