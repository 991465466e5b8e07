"""``manage.py killswitch MODE --reason TEXT``: the global kill switch from a shell."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.models import KillSwitch, KillSwitchMode
from agents.policy.selectors import kill_switch_current, policy_current
from agents.policy.services import kill_switch_set
from opsconsole.errors import ServiceError
from opsconsole.management.cli import actor_from, add_actor_argument, service_error_text

ON = "on"


class Command(BaseCommand):
    help = (
        "Show or set the global kill switch. 'on' means the policy's "
        "kill_switch.mode_when_enabled (disable_writes by default). Turning it on needs "
        "--reason; every change is audited and takes effect on the next gateway decision."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "mode",
            nargs="?",
            choices=[*KillSwitchMode.values, ON],
            help="The new mode; omit it to show the current state.",
        )
        parser.add_argument("--reason", default="", help="Why (required to turn it on).")
        add_actor_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        mode: str | None = options["mode"]
        if mode is None:
            self.stdout.write(describe(kill_switch_current()))
            return
        try:
            if mode == ON:
                mode = policy_current().mode_when_enabled
            switch = kill_switch_set(mode=mode, reason=options["reason"], actor=actor_from(options))
        except ServiceError as exc:
            raise CommandError(service_error_text(exc)) from None
        self.stdout.write(describe(switch))


def describe(switch: KillSwitch) -> str:
    state = f"Kill switch: ON, mode {switch.mode}" if switch.is_on else "Kill switch: off"
    details = []
    if switch.set_by:
        when = f" at {switch.set_at:%Y-%m-%d %H:%M:%S %Z}" if switch.set_at else ""
        details.append(f"set by {switch.set_by}{when}")
    if switch.reason:
        details.append(f"reason: {switch.reason}")
    return f"{state} ({'; '.join(details)})" if details else state
