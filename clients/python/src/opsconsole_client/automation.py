"""The console's automation API for platform teams, with a person's API token (``aou_...``).

What the console's pages do, as calls, under the same roles (on-call lists runs; admins manage
agents and keys and publish policy)::

    from opsconsole_client.automation import Console, ConsoleError

    with Console("https://console.example.com", token="aou_...") as console:
        for run in console.runs(status="stopped", stop_reason="tool_denied", range="24h"):
            print(run["id"], run["agent"], run["stop_reason"])

        agent = console.agent_create("billing-bot", tools=["kb.read"])
        key = console.key_issue("billing-bot", label="prod")["key"]  # shown this once

        current = console.policy_current()
        dry_run = console.policy_dry_run(new_yaml)
        if dry_run["stopped"] == 0:
            try:
                console.policy_publish(new_yaml, "from git", base_version=current["version"])
            except ConsoleError as error:
                if error.code == "policy_changed":  # someone published since: re-read, merge
                    ...

``AsyncConsole`` is the same with ``async with``, ``await`` and ``async for``. Every error answer
raises :class:`ConsoleError` with the HTTP status and the API's error code; nothing is retried
behind the caller's back, because publishing and key issuing are not idempotent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypedDict, cast
from urllib.parse import quote

import httpx

__all__ = [
    "Agent",
    "AgentKey",
    "AsyncConsole",
    "Console",
    "ConsoleError",
    "DryRun",
    "IssuedKey",
    "PolicyVersion",
    "ReplayedRun",
    "Run",
]

RunStatus = Literal["running", "waiting_approval", "succeeded", "failed", "stopped"]
RunSort = Literal["newest", "cost"]
TimeRange = Literal["1h", "24h", "7d"]


class Budgets(TypedDict):
    max_steps: int | None
    max_seconds: int | None
    max_tool_calls: int | None
    max_usd: float | None
    max_tokens: int | None


class Usage(TypedDict):
    steps: int
    tool_calls: int
    tokens: int
    usd: float
    seconds: float
    waiting_seconds: float


class Run(TypedDict):
    id: int
    agent: str
    agent_version: str
    task: str
    status: RunStatus
    stop_reason: str | None
    budgets: Budgets
    usage: Usage
    policy_version: int
    started_at: str
    ended_at: str | None


class AgentKey(TypedDict):
    id: int
    agent: str
    label: str
    prefix: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class IssuedKey(AgentKey):
    key: str
    """The raw key: in this answer only, never shown again."""


class Spend(TypedDict):
    last_hour: float
    last_day: float


class Agent(TypedDict):
    name: str
    description: str
    enabled: bool
    paused: bool
    disabled_reason: str
    disabled_by: str
    disabled_at: str | None
    created_at: str
    last_used_at: str | None
    keys: list[AgentKey]


class AgentWithSpend(Agent):
    spend: Spend


class PolicyVersion(TypedDict):
    version: int
    yaml: str
    author: str
    reason: str
    created_at: str
    restored_from: int | None


class ReplayedRun(TypedDict):
    run_id: int
    agent: str
    agent_version: str
    old_stop_reason: str
    new_stop_reason: str | None
    newly_stopped: bool
    differences: list[str]


class DryRun(TypedDict):
    replayed: int
    skipped: int
    stopped: int
    changed: int
    runs: list[ReplayedRun]


class ConsoleError(Exception):
    """An error answer from the console (or none at all).

    ``status`` is the HTTP status (None when the console could not be reached); ``code`` is the
    API's error code (``forbidden``, ``policy_changed``, ``invalid_policy``, ``agent_exists``,
    ``not_found``, ``malformed``, ...; ``unreachable`` or ``protocol_error`` from the client
    itself); ``detail`` is the API's detail (a sentence, or a list of problems); ``body`` the
    whole error answer.
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        detail: Any = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.body: Mapping[str, Any] = body or {}
        super().__init__(f"{status or 'no answer'} {code}: {detail}")


@dataclass(frozen=True)
class _Call:
    """One request of the automation API, built once for both clients."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None


def _when(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _runs_call(
    *,
    agent: str | None,
    status: RunStatus | None,
    stop_reason: str | None,
    since: datetime | str | None,
    until: datetime | str | None,
    range: TimeRange | None,
    search: str | None,
    tool: str | None,
    sort: RunSort,
    page_size: int,
    after: str | None,
) -> _Call:
    params = {
        "agent": agent,
        "status": status,
        "stop_reason": stop_reason,
        "since": _when(since),
        "until": _when(until),
        "range": range,
        "q": search,
        "tool": tool,
        "sort": sort,
        "limit": page_size,
        "after": after,
    }
    return _Call("GET", "/api/v1/runs", {k: v for k, v in params.items() if v is not None})


def _agent_create_call(name: str, description: str, tools: list[str] | None) -> _Call:
    return _Call(
        "POST",
        "/api/v1/agents",
        body={"name": name, "description": description, "tools": list(tools or [])},
    )


def _key_issue_call(agent: str, label: str) -> _Call:
    return _Call("POST", f"/api/v1/agents/{quote(agent, safe='')}/keys", body={"label": label})


def _key_revoke_call(key_id: int) -> _Call:
    return _Call("POST", f"/api/v1/agent-keys/{int(key_id)}/revoke", body={})


def _set_enabled_call(agent: str, enabled: bool, reason: str) -> _Call:
    return _Call(
        "PUT",
        f"/api/v1/agents/{quote(agent, safe='')}/enabled",
        body={"enabled": enabled, "reason": reason},
    )


def _dry_run_call(yaml: str, limit: int | None) -> _Call:
    body: dict[str, Any] = {"yaml": yaml}
    if limit is not None:
        body["limit"] = limit
    return _Call("POST", "/api/v1/policy/dry-run", body=body)


def _publish_call(yaml: str, reason: str, base_version: int) -> _Call:
    return _Call(
        "POST",
        "/api/v1/policy",
        body={"yaml": yaml, "reason": reason, "base_version": base_version},
    )


def _answer(response: httpx.Response) -> Any:
    """The JSON answer of a 2xx, or the error it is, as ConsoleError."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        if body is None:
            raise ConsoleError(response.status_code, "protocol_error", "the answer is not JSON")
        return body
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        raise ConsoleError(response.status_code, body["error"], body.get("detail"), body)
    raise ConsoleError(response.status_code, "protocol_error", response.text[:500])


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


class Console:
    """The automation API, synchronously. ``transport`` is httpx's (tests pass the app's)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=_headers(token),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Console:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> Any:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params or None, json=call.body
            )
        except httpx.HTTPError as error:
            raise ConsoleError(None, "unreachable", str(error)) from error
        return _answer(response)

    # --- runs (on-call and up) ----------------------------------------------------------------

    def runs(
        self,
        *,
        agent: str | None = None,
        status: RunStatus | None = None,
        stop_reason: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        range: TimeRange | None = None,
        search: str | None = None,
        tool: str | None = None,
        sort: RunSort = "newest",
        page_size: int = 100,
    ) -> Iterator[Run]:
        """Every run matching the runs page's filters, newest (or costliest) first, fetched a
        keyset page of ``page_size`` at a time as the iteration goes."""
        after: str | None = None
        while True:
            call = _runs_call(
                agent=agent,
                status=status,
                stop_reason=stop_reason,
                since=since,
                until=until,
                range=range,
                search=search,
                tool=tool,
                sort=sort,
                page_size=page_size,
                after=after,
            )
            page = self._send(call)
            yield from cast(list[Run], page["results"])
            after = page["next_after"]
            if after is None:
                return

    # --- agents and keys (admins) -------------------------------------------------------------

    def agents(self) -> list[AgentWithSpend]:
        return cast(list[AgentWithSpend], self._send(_Call("GET", "/api/v1/agents"))["results"])

    def agent(self, name: str) -> Agent:
        return cast(Agent, self._send(_Call("GET", f"/api/v1/agents/{quote(name, safe='')}")))

    def agent_create(
        self, name: str, *, description: str = "", tools: list[str] | None = None
    ) -> Agent:
        """A new agent (without a key); ``tools`` becomes its own allowlist."""
        return cast(Agent, self._send(_agent_create_call(name, description, tools)))

    def key_issue(self, agent: str, *, label: str = "") -> IssuedKey:
        """A new key for ``agent``: its ``key`` is in this answer only."""
        return cast(IssuedKey, self._send(_key_issue_call(agent, label)))

    def key_revoke(self, key_id: int) -> AgentKey:
        return cast(AgentKey, self._send(_key_revoke_call(key_id)))

    def agent_set_enabled(self, agent: str, enabled: bool, *, reason: str = "") -> Agent:
        """Enable or disable (with a reason: its runs stop with ``agent_disabled``)."""
        return cast(Agent, self._send(_set_enabled_call(agent, enabled, reason)))

    # --- policy (read: on-call and up; dry run and publish: admins) --------------------------

    def policy_current(self) -> PolicyVersion:
        return cast(PolicyVersion, self._send(_Call("GET", "/api/v1/policy")))

    def policy_dry_run(self, yaml: str, *, limit: int | None = None) -> DryRun:
        """What ``yaml`` would have done to the latest ended runs; nothing is saved."""
        return cast(DryRun, self._send(_dry_run_call(yaml, limit)))

    def policy_publish(self, yaml: str, reason: str, base_version: int) -> PolicyVersion:
        """Publish ``yaml`` as the next version. ``ConsoleError`` ``policy_changed`` (409) if a
        version was published since ``base_version``; ``invalid_policy`` (400) lists problems."""
        return cast(PolicyVersion, self._send(_publish_call(yaml, reason, base_version)))


class AsyncConsole:
    """The automation API for asyncio: the same methods as :class:`Console`, awaited."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=_headers(token),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncConsole:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params or None, json=call.body
            )
        except httpx.HTTPError as error:
            raise ConsoleError(None, "unreachable", str(error)) from error
        return _answer(response)

    async def runs(
        self,
        *,
        agent: str | None = None,
        status: RunStatus | None = None,
        stop_reason: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        range: TimeRange | None = None,
        search: str | None = None,
        tool: str | None = None,
        sort: RunSort = "newest",
        page_size: int = 100,
    ) -> AsyncIterator[Run]:
        after: str | None = None
        while True:
            call = _runs_call(
                agent=agent,
                status=status,
                stop_reason=stop_reason,
                since=since,
                until=until,
                range=range,
                search=search,
                tool=tool,
                sort=sort,
                page_size=page_size,
                after=after,
            )
            page = await self._send(call)
            for run in cast(list[Run], page["results"]):
                yield run
            after = page["next_after"]
            if after is None:
                return

    async def agents(self) -> list[AgentWithSpend]:
        page = await self._send(_Call("GET", "/api/v1/agents"))
        return cast(list[AgentWithSpend], page["results"])

    async def agent(self, name: str) -> Agent:
        return cast(Agent, await self._send(_Call("GET", f"/api/v1/agents/{quote(name, safe='')}")))

    async def agent_create(
        self, name: str, *, description: str = "", tools: list[str] | None = None
    ) -> Agent:
        return cast(Agent, await self._send(_agent_create_call(name, description, tools)))

    async def key_issue(self, agent: str, *, label: str = "") -> IssuedKey:
        return cast(IssuedKey, await self._send(_key_issue_call(agent, label)))

    async def key_revoke(self, key_id: int) -> AgentKey:
        return cast(AgentKey, await self._send(_key_revoke_call(key_id)))

    async def agent_set_enabled(self, agent: str, enabled: bool, *, reason: str = "") -> Agent:
        return cast(Agent, await self._send(_set_enabled_call(agent, enabled, reason)))

    async def policy_current(self) -> PolicyVersion:
        return cast(PolicyVersion, await self._send(_Call("GET", "/api/v1/policy")))

    async def policy_dry_run(self, yaml: str, *, limit: int | None = None) -> DryRun:
        return cast(DryRun, await self._send(_dry_run_call(yaml, limit)))

    async def policy_publish(self, yaml: str, reason: str, base_version: int) -> PolicyVersion:
        return cast(PolicyVersion, await self._send(_publish_call(yaml, reason, base_version)))
