"""Real servers beside the test process, for the tests that need them: a private redis-server
that can be stopped and restarted, and a Celery worker with beat on the test database.

The console itself under uvicorn comes from :mod:`opsconsole.devserver`, which also starts and
stops the worker here (as a process group: beat runs in a child process of the worker).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings as django_settings
from django.db import connection

from opsconsole.devserver import free_port, spawn, stop_group


class PrivateRedis:
    """A redis-server on a free port of its own, never the shared one; restarts keep the port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.processes[-1].terminate()
        self.processes[-1].wait(timeout=10)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def session_database_url() -> str:
    """The database this test session uses, as a ``DATABASE_URL`` for a child process."""
    db = django_settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def start_worker(*, redis_url: str, tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    """A real Celery worker with beat on the test database and ``redis_url``; its output goes
    to ``log``."""
    connection.close()  # let the worker see committed rows without our connection in the way
    return spawn(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "opsconsole",
            "worker",
            "--beat",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
            "--schedule",
            str(tmp_path / "beat-schedule"),
        ],
        env={
            "DATABASE_URL": session_database_url(),
            "REDIS_URL": redis_url,
            "OPSCONSOLE_EMBEDDED_SCHEDULER": "false",
            "OPSCONSOLE_DATA_DIR": str(tmp_path),
            "DJANGO_SECRET_KEY": "worker-test-secret-key-not-for-production-use-0123456789",
        },
        log=log,
    )


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """A warm shutdown (SIGTERM), then SIGKILL to the worker and its beat after ``timeout``."""
    stop_group(process, timeout=timeout)
