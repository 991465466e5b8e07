"""``manage.py demo``: the console with a fleet of simulated agents, on one machine."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.demo import fleet as demo_fleet
from agents.demo import world as demo_world
from opsconsole.devserver import ConsoleServer


class Command(BaseCommand):
    help = (
        "Migrate, create demo users, policy and agents, start the console (uvicorn) and run a "
        "fleet of simulated agents until Ctrl-C (or --duration)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="port of the console")
        parser.add_argument(
            "--no-fleet", action="store_true", help="start the console without the agents"
        )
        parser.add_argument(
            "--duration",
            type=float,
            default=None,
            metavar="SECONDS",
            help="stop after this long (counted from when the console answers)",
        )

    def handle(
        self, *args: Any, port: int, no_fleet: bool, duration: float | None, **options: Any
    ) -> None:
        if duration is not None and duration <= 0:
            raise CommandError("--duration must be a positive number of seconds.")
        shutdown = threading.Event()

        def request_shutdown(signum: int, frame: FrameType | None) -> None:
            shutdown.set()

        previous = {
            signum: signal.signal(signum, request_shutdown)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        server = ConsoleServer(port=port)
        agents: demo_fleet.Fleet | None = None
        try:
            world = demo_world.prepare()
            self._introduce(world, server.url)
            server.start()
            try:
                server.wait_healthy()
            except RuntimeError as exc:
                raise CommandError(str(exc)) from None
            self.say(f"Console: {server.url}/  (Ctrl-C stops everything)")
            if not no_fleet:
                agents = demo_fleet.Fleet(server.url, world.agent_keys, report=self.say)
                agents.start()
                self.say("Fleet started: one line per finished run (agent, run id, stop reason).")
            self._wait(shutdown, server, duration)
        finally:
            if agents is not None:
                self.say("Stopping the fleet ...")
                agents.stop()
            server.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.say("Demo stopped.")

    def _wait(
        self, shutdown: threading.Event, server: ConsoleServer, duration: float | None
    ) -> None:
        remaining = duration
        while not shutdown.is_set():
            if not server.running:
                raise CommandError("The console server stopped unexpectedly.")
            tick = 1.0 if remaining is None else min(1.0, remaining)
            shutdown.wait(tick)
            if remaining is not None:
                remaining -= tick
                if remaining <= 0:
                    return

    def _introduce(self, world: demo_world.DemoWorld, url: str) -> None:
        self.say("Demo users (new passwords and API tokens at every start):")
        for user in world.users:
            self.say(
                f"  {user.username:<9} role {user.role:<9} password {user.password}"
                f"  token {user.token}"
            )
        state = "published" if world.policy_published else "already in force"
        self.say(f"Demo policy: version {world.policy_version} ({state}).")
        self.say(f"Demo agents (keys kept in this process): {', '.join(world.agent_keys)}")
        self.say(f"Log in at {url}/login/ as reviewer to approve mail-bot's writes.")

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
