"""``manage.py demo`` end to end: a fresh console, the fleet over real HTTP, a clean stop."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from opsconsole.devserver import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_LINE = re.compile(r"^(?P<agent>[\w-]+)\s+run (?P<run_id>\d+)\s+(?P<reason>\S+)", re.MULTILINE)


def test_the_demo_fleet_shows_its_stop_reasons_and_stops_cleanly(tmp_path):
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    environment["OPSCONSOLE_DATA_DIR"] = str(tmp_path)  # a fresh SQLite database
    port = free_port()

    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--duration", "25", "--port", str(port)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for username in ("oncall", "reviewer", "admin"):
        assert re.search(
            rf"^  {username}\s+role {username}\s+password \S+\s+token aou_\S+",
            result.stdout,
            re.MULTILINE,
        )
    finished = [match.groupdict() for match in RUN_LINE.finditer(result.stdout)]
    reasons_by_agent: dict[str, set[str]] = {}
    for line in finished:
        reasons_by_agent.setdefault(line["agent"], set()).add(line["reason"])
    assert "ok" in reasons_by_agent["support-bot"]
    assert "max_tool_calls" in reasons_by_agent["browser-runaway"]
    assert "loop_detected:search.read" in reasons_by_agent["loop-bot"]
    assert "Demo stopped." in result.stdout

    # What it printed is what the console recorded, and nothing was left running.
    with sqlite3.connect(tmp_path / "opsconsole.sqlite3") as database:
        recorded = dict(database.execute("SELECT id, stop_reason FROM agents_run"))
        active = database.execute(
            "SELECT count(*) FROM agents_run WHERE status IN ('running', 'waiting_approval')"
        ).fetchone()[0]
        runaway_calls = database.execute(
            "SELECT r.tool_calls FROM agents_run r JOIN agents_agent a ON a.id = r.agent_id "
            "WHERE a.name = 'browser-runaway' AND r.stop_reason = 'max_tool_calls'"
        ).fetchall()
    for line in finished:
        assert recorded[int(line["run_id"])] == line["reason"], line
    assert active == 0
    assert runaway_calls and all(calls == 15 for (calls,) in runaway_calls)

    # The server subprocess is gone with it.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
