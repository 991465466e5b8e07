"""A scripted gateway for the client's tests (httpx.MockTransport): each route answers with a
handler, by default as a healthy gateway would; every request is recorded."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from opsconsole_client import AsyncGateway, Gateway, Run


def run_json(run_id: int = 7, status: str = "running", stop_reason: str | None = None) -> dict:
    return {
        "id": run_id,
        "agent": "support-bot",
        "status": status,
        "stop_reason": stop_reason,
        "budgets": {},
        "usage": {"steps": 0, "tool_calls": 0, "tokens": 0, "usd": 0.0, "seconds": 0.0},
    }


def tool_call_json(decision: str = "allow", stop_reason: str | None = None, **extra) -> dict:
    return {
        "id": 11,
        "tool": "search.read",
        "decision": decision,
        "stop_reason": stop_reason,
        "detail": "",
        "approval": None,
        "run": run_json(),
        **extra,
    }


Handler = Callable[[httpx.Request], httpx.Response]


class ScriptedGateway:
    """Answers each route with a handler; by default everything goes well. Records requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.routes: dict[str, Handler] = {
            "POST /api/v1/runs": lambda r: httpx.Response(201, json=run_json()),
            "POST /api/v1/runs/7/steps": lambda r: httpx.Response(
                200, json={"decision": "continue", "stop_reason": None, "run": run_json()}
            ),
            "POST /api/v1/runs/7/tool-calls": lambda r: httpx.Response(200, json=tool_call_json()),
            "GET /api/v1/tool-calls/11": lambda r: httpx.Response(200, json=tool_call_json()),
            "POST /api/v1/tool-calls/11/result": lambda r: httpx.Response(
                200, json={"valid": True, "stop_reason": None, "errors": [], "run": run_json()}
            ),
            "POST /api/v1/runs/7/finish": lambda r: httpx.Response(
                200, json=run_json(status="succeeded", stop_reason="ok")
            ),
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = f"{request.method} {request.url.path}"
        handler = self.routes.get(route)
        if handler is None:
            return httpx.Response(404, json={"error": "not_found", "detail": route})
        return handler(request)

    def sent(self, route: str) -> list[dict[str, Any]]:
        method, path = route.split(" ", 1)
        return [
            json.loads(r.content) if r.content else {}
            for r in self.requests
            if r.method == method and r.url.path == path
        ]

    def gateway(self, **options) -> Gateway:
        gateway = Gateway(
            "http://gateway.test", "aok_test", transport=httpx.MockTransport(self.handle), **options
        )
        gateway.sleep = self.sleeps.append  # retries wait without sleeping
        return gateway

    def async_gateway(self, **options) -> AsyncGateway:
        gateway = AsyncGateway(
            "http://gateway.test", "aok_test", transport=httpx.MockTransport(self.handle), **options
        )

        async def no_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        gateway.sleep = no_sleep
        return gateway


def started_run(scripted: ScriptedGateway, **options) -> Run:
    return scripted.gateway(**options).run("answer a customer question")


def pending_json(expires_at: datetime) -> dict:
    return tool_call_json(
        decision="pending_approval",
        tool="email.send",
        approval={
            "id": 3,
            "status": "pending",
            "reviewers_required": 1,
            "approvals": 0,
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        },
    )
