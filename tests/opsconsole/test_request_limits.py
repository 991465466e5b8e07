"""What an agent sends is refused at the door when no database could store it or the server
should not read it: unpaired surrogates, oversized bodies, wrong methods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from agents.models import Run, ToolCall

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


def raw_post(client: Client, path: str, text: str):
    """A body as the agent wrote it: ``\\ud800`` stays a JSON escape until the server parses it."""
    return client.post(path, text, content_type="application/json")


# --- strings no database can store ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{"task": "look up \\ud800"}',
        '{"task": "t", "metadata": {"note": "\\udfff"}}',
        '{"task": "t", "metadata": {"\\ud83d": 1}}',
    ],
    ids=["task", "metadata-value", "metadata-key"],
)
def test_a_run_holding_an_unpaired_surrogate_is_refused_and_nothing_is_saved(agent, body):
    response = raw_post(agent.api, "/api/v1/runs", body)

    assert response.status_code == 400, response.content
    assert response.json()["error"] == "malformed"
    assert "surrogate" in response.json()["detail"]
    assert Run.objects.count() == 0


def test_tool_arguments_and_outputs_holding_a_surrogate_are_refused(agent, start_run):
    run = start_run()
    calls = f"/api/v1/runs/{run['id']}/tool-calls"

    refused = raw_post(agent.api, calls, '{"tool": "kb.read", "args": {"q": "\\ud800"}}')
    allowed = agent.api.post_json(calls, {"tool": "kb.read", "args": {"q": "fine"}}).json()
    result = raw_post(
        agent.api,
        f"/api/v1/tool-calls/{allowed['id']}/result",
        '{"ok": true, "output": {"text": "\\udc00"}}',
    )

    assert refused.status_code == 400
    assert result.status_code == 400
    assert ToolCall.objects.count() == 1
    assert ToolCall.objects.get().reported_at is None


def test_a_properly_paired_emoji_is_still_accepted(agent):
    response = raw_post(agent.api, "/api/v1/runs", '{"task": "say \\ud83d\\ude00"}')

    assert response.status_code == 201
    assert Run.objects.get().task == "say \U0001f600"


# --- the long poll answers other methods as the API does -------------------------------------------


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_other_methods_on_a_tool_call_get_the_apis_405_not_a_csrf_page(agent, method):
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {agent.key}")

    response = getattr(client, method)(
        "/api/v1/tool-calls/1", "{}", content_type="application/json"
    )

    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert response["Allow"] == "GET"


# --- bodies larger than the cap are not read ---------------------------------------------------------

# Drives opsconsole/asgi.py's application itself (as uvicorn would), in a child process so that
# importing it does not start the embedded scheduler here.
DRIVER = """
import asyncio, json, sys
from opsconsole.asgi import application
from django.conf import settings

cap = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
chunk = 64 * 1024
declared = sys.argv[1] == "declared"

async def main():
    pulled = 0
    sent = []
    async def receive():
        nonlocal pulled
        pulled += chunk
        return {"type": "http.request", "body": b"x" * chunk, "more_body": pulled < 20 * cap}
    async def send(message):
        sent.append(message)
    headers = [(b"content-type", b"application/json"), (b"host", b"localhost")]
    if declared:
        headers.append((b"content-length", str(20 * cap).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/v1/runs", "raw_path": b"/api/v1/runs",
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await application(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    print(json.dumps({"status": start["status"], "pulled": pulled if pulled else 0,
                      "cap": cap, "chunk": chunk, "body": body.decode()}))

asyncio.run(main())
"""


def drive(mode: str, tmp_path) -> dict:
    env = {
        **os.environ,
        "OPSCONSOLE_EMBEDDED_SCHEDULER": "false",
        "OPSCONSOLE_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_declared_oversized_body_is_refused_before_a_byte_is_read(tmp_path):
    answer = drive("declared", tmp_path)

    assert answer["status"] == 413
    assert answer["pulled"] == 0
    assert json.loads(answer["body"])["error"] == "payload_too_large"


def test_a_streamed_body_is_cut_as_soon_as_it_passes_the_cap(tmp_path):
    answer = drive("streamed", tmp_path)

    assert answer["status"] == 413
    assert answer["pulled"] <= answer["cap"] + answer["chunk"]
