"""``manage.py create_agent NAME [--tool T ...]``: a new agent and its first API key."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from agents.policy.selectors import policy_current
from agents.registry.services import agent_create, agent_key_issue
from opsconsole.errors import ServiceError
from opsconsole.management.cli import actor_from, add_actor_argument, service_error_text

# The same shapes agents/policy.py accepts for an agent's name and a tool's name.
AGENT_NAME = re.compile(r"^[-a-zA-Z0-9_]{1,100}$")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


class Command(BaseCommand):
    help = (
        "Create an agent and issue its first API key, printed once. With --tool, the agent gets "
        "its own allowlist (a new policy version); it can only narrow the global allowlist."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Letters, digits, '-' and '_', e.g. support-bot.")
        parser.add_argument(
            "--tool",
            action="append",
            dest="tools",
            default=[],
            metavar="TOOL",
            help="A tool this agent may use (repeat for several). Default: every global tool.",
        )
        parser.add_argument("--description", default="", help="What the agent is for.")
        parser.add_argument("--label", default="cli", help="A label for the key (default cli).")
        add_actor_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        tools: list[str] = options["tools"]
        if not AGENT_NAME.match(name):
            raise CommandError(
                f"{name!r} is not a valid agent name: use 1-100 letters, digits, '-' or '_'."
            )
        bad_tools = [tool for tool in tools if not TOOL_NAME.match(tool) or len(tool) > 200]
        if bad_tools:
            raise CommandError(
                f"Not a valid tool name: {', '.join(map(repr, bad_tools))} "
                "(dotted words of letters, digits, '-' and '_', e.g. kb.read)."
            )
        actor = actor_from(options)
        try:
            global_allow = policy_current().document["tools"]["allow"]
            # The agent and its key together, or neither.
            with transaction.atomic():
                agent = agent_create(
                    name=name, actor=actor, description=options["description"], tools=tools
                )
                key, raw_key = agent_key_issue(agent=agent, actor=actor, label=options["label"])
        except ServiceError as exc:
            raise CommandError(service_error_text(exc)) from None

        for tool in sorted(set(tools)):
            if tool not in global_allow:
                self.stderr.write(
                    self.style.WARNING(
                        f"Warning: {tool} is not on the global allowlist; calls to it are denied "
                        "until the global policy allows it."
                    )
                )
        self.stdout.write(self.style.SUCCESS(f"Created agent {agent.name} (id {agent.pk})."))
        if tools:
            self.stdout.write(f"Its own allowlist: {', '.join(sorted(set(tools)))}.")
        else:
            allowed = ", ".join(global_allow) or "none"
            self.stdout.write(f"It may use every globally allowed tool (now: {allowed}).")
        self.stdout.write(f"API key {key.prefix}… (label {key.label!r}):")
        self.stdout.write(f"  {raw_key}")
        self.stdout.write(
            self.style.WARNING("Store it now: it will not be shown again (only its hash is kept).")
        )
