"""The gateway's contract tests (tests/gateway/test_api.py) again, with every tool call sent
through the ASGI application the server runs: the fast path (agents/gateway/core.py) in front of
Django, as ``opsconsole/asgi.py`` wires it.

The fast path's statements run here on the test's own connection (``core.decide_sync``, inside
the test's transaction), so each test sees the world its fixtures made; the async driver and the
pool are exercised by tests/gateway/test_core_processes.py. On SQLite the fast path is off and
every call goes through Django: the same tests then prove the hand-over changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished, request_started
from django.db import OperationalError, close_old_connections
from django.http import HttpResponse

from agents.gateway import core
from agents.gateway.core import PATH, ToolCallFastPath
from opsconsole.limits import RequestBodyLimit
from tests.conftest import JsonClient
from tests.gateway.test_api import *  # noqa: F403 - every contract test, collected again here
from tests.gateway.test_api import ToolCall

_APPLICATION: list[Any] = []


def application() -> Any:
    if not _APPLICATION:
        _APPLICATION.append(RequestBodyLimit(ToolCallFastPath(ASGIHandler())))
    return _APPLICATION[0]


def asgi_request(
    method: str, path: str, body: bytes, headers: dict[str, str], scheme: str = "http"
) -> HttpResponse:
    """One request through the ASGI application; the answer as a test client's response."""
    raw = [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    messages: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Future()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    # As Django's test client does: the test's connection must survive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        async_to_sync(application())(scope, receive, send)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    start = next(m for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    response = HttpResponse(content, status=start["status"])
    for name, value in start.get("headers", []):
        response.headers[name.decode("latin-1")] = value.decode("latin-1")
    response.json = lambda: json.loads(content)  # type: ignore[attr-defined]
    return response


def client_headers(client: JsonClient, extra: dict[str, Any], content_type: str) -> dict[str, str]:
    headers = {"content-type": content_type}
    for name, value in {**client.defaults, **extra}.items():
        if name.startswith("HTTP_"):
            headers[name[5:].replace("_", "-").lower()] = str(value)
    return headers


_original_post_json = JsonClient.post_json


def post_json_through_asgi(self: JsonClient, path: str, data: Any = None, **extra: Any) -> Any:
    if PATH.fullmatch(path) is None:
        return _original_post_json(self, path, data, **extra)
    body = json.dumps(data if data is not None else {}).encode()
    return asgi_request("POST", path, body, client_headers(self, extra, "application/json"))


@pytest.fixture(autouse=True)
def _tool_calls_through_the_asgi_application(monkeypatch):
    monkeypatch.setattr(JsonClient, "post_json", post_json_through_asgi)
    monkeypatch.setattr(core, "decide_async", sync_to_async(core.decide_sync))
    monkeypatch.setattr(core, "key_lookup_async", sync_to_async(core.key_lookup_sync))


def test_a_database_failure_is_a_503_never_an_allow(agent, start_run, monkeypatch):
    """Replaces test_api's: the fast path's database fails too, and hands the call to Django."""
    run = start_run()

    def broken(*args, **kwargs):
        raise OperationalError("could not connect to server")

    async def fast_path_broken(*args, **kwargs):
        raise core.Fallback("database")

    monkeypatch.setattr(core, "decide_async", fast_path_broken)
    monkeypatch.setattr("agents.gateway.services.run_lock_for_agent", broken)
    response = agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}}
    )
    assert response.status_code == 503
    assert response.json()["error"] == "control_plane_unavailable"
    assert ToolCall.objects.count() == 0
