"""The console as a child process: uvicorn on a port, ready once ``/healthz`` answers.

One launcher for everything that starts a real server beside itself: ``manage.py demo``, the
benchmarks in ``bench/`` and the tests that break a live server (faults) or run a real Celery
worker (:func:`spawn` and :func:`stop_group` serve any command). It belongs to the lower layer
and imports nothing from the apps.

Every child runs in a session of its own and is stopped as a process group. With the Redis
channel layer a uvicorn worker still shutting down (it waits for closed websockets' consumers to
finish their blocking reads) would otherwise outlive its supervisor as an orphan holding its port
and database connections, and a Celery worker's embedded beat is a child process too. A session
of its own also keeps a terminal's Ctrl-C from reaching the child: the parent decides when the
server goes (the demo lets its agents finish their runs first).

    with ConsoleServer(env={"REDIS_URL": None}, log=tmp_path / "uvicorn.log") as server:
        ...  # started, and /healthz answered: talk to server.url
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
# uvicorn's own bound on a graceful shutdown: with the Redis channel layer a closed websocket's
# consumer can take until its blocking read times out to finish; do not wait longer for it.
GRACEFUL_SHUTDOWN_SECONDS = 5

EnvOverrides = Mapping[str, str | None]


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nothing listens on at this moment (chosen by the operating system)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def child_environment(overrides: EnvOverrides | None = None) -> dict[str, str]:
    """This process's environment with ``overrides`` applied; ``None`` removes a variable."""
    environment = dict(os.environ)
    for name, value in (overrides or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


def spawn(
    command: Sequence[str], *, env: EnvOverrides | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in the repository root, in a session (and process group) of its own.

    Its stdout and stderr go to ``log`` (appended, so a restarted server keeps the earlier
    lines) or, without one, to this process's own stdout and stderr.
    """
    if log is None:
        return subprocess.Popen(
            command, cwd=ROOT, env=child_environment(env), start_new_session=True
        )
    with log.open("ab") as output:  # the child holds its own copy of the descriptor
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=child_environment(env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever is left after ``timeout`` seconds.

    The SIGKILL goes to the group even when the leader exited in time: a straggler of its (a
    worker process) must not survive it. Harmless on a process that already ended.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def log_tail(log: Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log, for an error message ("" without a log)."""
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


class ConsoleServer:
    """``uvicorn opsconsole.asgi:application`` on ``host:port``, as a child process.

    ``env`` overrides this process's environment (``None`` removes a variable); ``workers``
    is uvicorn's ``--workers`` (left out by default: one process, or ``WEB_CONCURRENCY``);
    ``log`` captures the server's output, which is then quoted when it fails to start;
    ``stop_timeout`` is how long :meth:`stop` waits for a graceful exit before SIGKILL. Stopped,
    or killed, it can be started again on the same port.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOCALHOST,
        env: EnvOverrides | None = None,
        workers: int | None = None,
        log: Path | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.env = dict(env or {})
        self.workers = workers
        self.log = log
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        workers = ["--workers", str(self.workers)] if self.workers is not None else []
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "opsconsole.asgi:application",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *workers,
            "--lifespan",
            "off",
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            str(GRACEFUL_SHUTDOWN_SECONDS),
        ]

    def start(self) -> None:
        """Start uvicorn without waiting for it (see :meth:`wait_healthy`)."""
        if self.running:
            raise RuntimeError(f"the console server on port {self.port} is already running")
        self.process = spawn(self.command(), env=self.env, log=self.log)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Return once ``/healthz`` answers 200. RuntimeError if the server exits first or does
        not answer within ``timeout`` seconds (the server is left as it is: stop it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"the console server exited early (port {self.port} in use?)"
                    + self._quoted_log()
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(
            f"the console did not answer {self.url}/healthz in {timeout:.0f}s" + self._quoted_log()
        )

    def kill(self) -> None:
        """SIGKILL the whole server at once, as a crash would."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server gracefully (:func:`stop_group`, waiting ``timeout`` or else
        ``stop_timeout`` seconds before SIGKILL); nothing to do if it never started."""
        process, self.process = self.process, None
        if process is not None:
            stop_group(process, timeout=self.stop_timeout if timeout is None else timeout)

    def __enter__(self) -> ConsoleServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _quoted_log(self) -> str:
        tail = log_tail(self.log)
        return f"; the end of {self.log}:\n{tail}" if tail else ""
