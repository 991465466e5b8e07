"""Replay every golden run against the policy in force or a policy file; exit 1 on a difference.

    manage.py run_golden                      # the policy in force
    manage.py run_golden --policy draft.yaml  # a change before it is imported

Exit codes: 0 no difference, 1 a golden run would be decided differently, 2 a bad policy file.
A team can gate a policy change in its own CI with it.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.monitoring import replay as monitoring_replay
from agents.policy.document import PolicyError, parse_yaml
from agents.policy.selectors import policy_current
from opsconsole.errors import Invalid


class Command(BaseCommand):
    help = "Replay every golden run against a policy; exit 1 on any difference."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--policy", help="a YAML policy file (default: the policy in force)")

    def handle(self, *args, **options) -> None:
        if options["policy"]:
            try:
                policy = monitoring_replay.draft_policy(
                    parse_yaml(Path(options["policy"]).read_text())
                )
            except (OSError, PolicyError, Invalid) as exc:
                raise CommandError(f"Cannot use {options['policy']}: {exc}", returncode=2) from None
            against = options["policy"]
        else:
            policy = policy_current()
            against = f"policy v{policy.version}"
        results = monitoring_replay.golden_replay(monitoring_replay.golden_list(), policy)
        differing = [(golden, result) for golden, result in results if result.changed]
        for golden, result in differing:
            self.stdout.write(f"run {golden.run_id} ({result.agent} {result.agent_version}):")
            for line in result.differences():
                self.stdout.write(f"  {line}")
        self.stdout.write(f"{len(results)} golden run(s) replayed against {against}.")
        if differing:
            raise CommandError(
                f"{len(differing)} of {len(results)} golden run(s) differ.", returncode=1
            )
        self.stdout.write("no difference")
