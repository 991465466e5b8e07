"""The console under uvicorn for the benchmarks (bench/console.py, bench/gateway.py).

Started in a session of its own and stopped as a process group: with the Redis channel layer a
worker still shutting down (it waits for closed websockets' consumers to finish their blocking
reads) would otherwise outlive its supervisor as an orphan holding its port and database
connections.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def start(
    *, env: dict[str, str], port: int, workers: int, output: IO[Any] | None = None
) -> subprocess.Popen:
    """Start uvicorn and wait until ``/healthz`` answers (RuntimeError if it never does)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "opsconsole.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--lifespan",
            "off",
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "5",
        ],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
    )
    for _ in range(150):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError("uvicorn did not start")


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the whole group, SIGKILL to whatever is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
