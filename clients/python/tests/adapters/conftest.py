"""A live console for the adapter tests: the server's own uvicorn in a child process.

The client's virtualenv never holds the server (the OpenAI Agents SDK's top-level package is
also called ``agents``), so the console runs from the server's virtualenv (the repository's
``.venv``, or ``OPSCONSOLE_SERVER_PYTHON``) on a fresh SQLite data directory, seeded with the
management commands an operator would use: ``import_policy``, ``create_agent``, ``create_user``.

The policy has one read tool (``search_kb``), one write that needs an approval and has an
argument schema (``send_email``), and nothing else: ``delete_db`` is denied by default.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsconsole_client import RetryPolicy

REPO = Path(__file__).resolve().parents[4]
# Where the server's code and its virtualenv are: this repository unless said otherwise.
SERVER_ROOT = Path(os.environ.get("OPSCONSOLE_SERVER_ROOT") or REPO)
SERVER_PYTHON = Path(
    os.environ.get("OPSCONSOLE_SERVER_PYTHON") or REPO / ".venv" / "bin" / "python"
)

POLICY_YAML = """\
tools:
  allow: ["search_kb", "send_email"]
  definitions:
    search_kb:
      description: "Search the knowledge base."
      effect: read
    send_email:
      description: "Send an email to a customer."
      effect: write
      approval: {required: true, timeout_seconds: 120}
      args_schema:
        type: object
        required: [to, body]
        properties:
          to: {type: string, minLength: 3}
          body: {type: string}
budgets:
  max_steps: 30
  max_seconds: 90
  max_tool_calls: 15
writes:
  require_approval: true
kill_switch:
  mode_when_enabled: "disable_writes"
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Console:
    url: str
    agent_key: str
    reviewer_token: str

    def people(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.reviewer_token}"},
            timeout=10,
        )

    def run_record(self, run_id: int) -> dict[str, Any]:
        """The run as the console shows it to a person."""
        with self.people() as http:
            response = http.get(f"/runs/{run_id}")
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data

    def decide_approval_later(self, run_id: int, verdict: str) -> threading.Thread:
        """A reviewer who waits for the run's approval request, then approves or rejects it."""

        def review() -> None:
            with self.people() as http:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    page = http.get("/approvals", params={"status": "pending"}).json()
                    mine = [item for item in page["results"] if item["run"] == run_id]
                    if mine:
                        http.post(
                            f"/approvals/{mine[0]['id']}/decision",
                            json={"verdict": verdict, "comment": f"{verdict} by the test"},
                        ).raise_for_status()
                        return
                    time.sleep(0.1)

        reviewer = threading.Thread(target=review, daemon=True)
        reviewer.start()
        return reviewer


# The management commands in one Django process (each would start Django again): migrate, publish
# the policy, create the agent with its key and the reviewer with a token; print what was issued.
SEED = """
import io, json, sys
import django
django.setup()
from django.core.management import call_command

def command(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()

call_command("migrate", verbosity=0)
command("import_policy", sys.argv[1], "--reason", "adapter tests")
print(json.dumps({
    "agent": command("create_agent", "adapter-bot"),
    "reviewer": command("create_user", "rita", "--role", "reviewer"),
}))
"""


def _seed(env: dict[str, str], policy: Path) -> tuple[str, str]:
    """The agent's key and the reviewer's API token, each printed once by its command."""
    finished = subprocess.run(
        [str(SERVER_PYTHON), "-c", SEED, str(policy)],
        cwd=SERVER_ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "opsconsole.settings"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if finished.returncode != 0:
        raise RuntimeError(f"seeding the console failed:\n{finished.stderr}")
    printed = json.loads(finished.stdout.strip().splitlines()[-1])
    # The key is printed alone on its line (an earlier line shows only its prefix).
    key = re.search(r"^\s+(aok_\S+)$", printed["agent"], re.MULTILINE)
    token = re.search(r"API token:\s*(\S+)", printed["reviewer"])
    assert key and token, f"no key or token in {printed}"
    return key.group(1), token.group(1)


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data_dir = tmp_path_factory.mktemp("console")
    env = {
        name: value
        for name, value in os.environ.items()
        # The embedded default: SQLite in data_dir and in-memory layers, whatever CI exports.
        if name not in {"DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV", "PYTHONPATH"}
    }
    env.update(OPSCONSOLE_DATA_DIR=str(data_dir), OPSCONSOLE_RATE_RUNS="off")
    policy = data_dir / "policy.yaml"
    policy.write_text(POLICY_YAML)
    agent_key, reviewer_token = _seed(env, policy)

    port = _free_port()
    log = (data_dir / "uvicorn.log").open("ab")
    server = subprocess.Popen(
        [str(SERVER_PYTHON), "-m", "uvicorn", "opsconsole.asgi:application"]
        + ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
        + ["--log-level", "warning", "--no-access-log"],
        cwd=SERVER_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (data_dir / "uvicorn.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the console did not answer /healthz"
            time.sleep(0.2)
        yield Console(url=url, agent_key=agent_key, reviewer_token=reviewer_token)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


# A console that cannot be reached costs a test no more than a few hundredths of a second.
FAST_RETRIES = RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02)


class SwitchableTransport(httpx.HTTPTransport):
    """The real network until ``down`` is set; then every request fails to connect."""

    down = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return super().handle_request(request)


class AsyncSwitchableTransport(httpx.AsyncHTTPTransport):
    down = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await super().handle_async_request(request)
