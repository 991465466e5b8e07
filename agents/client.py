"""A fail-closed Python client for the Agent Ops Console gateway (API v1, see SPEC.md).

It imports only the standard library and ``httpx``, so any agent process can use it without
Django. Every tool call is decided by the gateway *before* the tool runs::

    from agents.client import Budgets, Gateway, Stop

    gateway = Gateway("http://127.0.0.1:8000", key="aok_...")
    try:
        with gateway.run("answer ticket 4711", budgets=Budgets(max_tool_calls=10)) as run:
            run.step(model="small-model", tokens_in=900, tokens_out=120, usd=0.002)
            hits = run.tool("search.read", {"q": "refund policy"}, search)
            run.answer = summarise(hits)  # the run finishes `succeeded` when the block ends
    except Stop as stop:
        print("stopped:", stop.reason)  # e.g. max_tool_calls, tool_denied:browser.open

The client never proceeds on doubt. Whatever it cannot interpret becomes :class:`Stop`, and the
tool's implementation is not called:

- a stop decision from the gateway: ``Stop(<stop reason from SPEC.md>)``;
- a 5xx answer (503 included), a connection error or a timeout:
  ``Stop("control_plane_unavailable")``;
- an answer that is not JSON, lacks a field or carries an unknown decision:
  ``Stop("protocol_error")``;
- any other 4xx error ``{"error": code, "detail": ...}``: ``Stop(code)`` (``Stop.status_code``
  holds the HTTP status), except that a 409 carrying a ``stop_reason`` (a refused run, a run that
  already ended) raises ``Stop(stop_reason)``.

Requests that are safe to repeat (creating a run or a tool call, each with an idempotency key the
client generates; reporting a result; polling) are retried once after a transport error, so a
lost answer never spends a budget twice. Model steps carry no idempotency key and are never
retried.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from types import TracebackType
from typing import Any, Final, Literal, TypeGuard, TypeVar

import httpx

__all__ = [
    "CONTROL_PLANE_UNAVAILABLE",
    "PROTOCOL_ERROR",
    "Budgets",
    "Gateway",
    "Interrupted",
    "Run",
    "Stop",
]

# The client's own stop reasons, beside the gateway's closed vocabulary.
CONTROL_PLANE_UNAVAILABLE: Final = "control_plane_unavailable"
PROTOCOL_ERROR: Final = "protocol_error"

API_PREFIX: Final = "/api/v1"
# The server accepts waits up to 30 s; 25 s leaves room for the answer to travel.
LONG_POLL_SECONDS: Final = 25.0
# How long past an approval's expires_at the client keeps waiting for the server to say so.
APPROVAL_MARGIN_SECONDS: Final = 30.0

_TOOL_DECISIONS: Final = frozenset({"allow", "pending_approval", "stop"})
_STEP_DECISIONS: Final = frozenset({"continue", "stop"})
_ENDED_STATUSES: Final = frozenset({"succeeded", "failed", "stopped"})

T = TypeVar("T")


@dataclass(frozen=True)
class Budgets:
    """What the run asks for; the gateway applies the smaller of this and the policy ceiling."""

    max_steps: int | None = 30
    max_seconds: int | None = 90
    max_tool_calls: int | None = 15
    max_usd: float | None = None
    max_tokens: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}


class Stop(RuntimeError):
    """The run must not go on.

    ``reason`` is a stop reason from the gateway's vocabulary (``max_tool_calls``,
    ``tool_denied:browser.open``, ...) or one of the client's own: ``control_plane_unavailable``,
    ``protocol_error``, or the error code of a refused request (``unauthenticated``, ...).
    """

    def __init__(self, reason: str, detail: str = "", *, status_code: int | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status_code = status_code


class Interrupted(RuntimeError):
    """The gateway's ``interrupt`` event was set while the client was waiting for an approval.

    It is not a :class:`Stop`: leaving the ``with`` block with it finishes the run ``failed``,
    which also withdraws the pending approval request.
    """


class Gateway:
    """A connection to the gateway with one agent's key. Not shared between processes.

    ``base_url`` is the console's address (``http://host:8000``); ``/api/v1`` is added unless it
    is already there. ``transport`` replaces httpx's (tests use ``httpx.MockTransport`` or
    ``httpx.WSGITransport``). ``interrupt``, when set, makes a waiting :meth:`Run.tool` raise
    :class:`Interrupted` within ``poll_seconds``.
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        retries: int = 1,
        poll_seconds: float = LONG_POLL_SECONDS,
        approval_margin_seconds: float = APPROVAL_MARGIN_SECONDS,
        interrupt: threading.Event | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        if not root.endswith(API_PREFIX):
            root += API_PREFIX
        self.timeout = timeout
        self.retries = max(0, retries)
        self.poll_seconds = max(1.0, min(poll_seconds, 30.0))
        self.approval_margin_seconds = approval_margin_seconds
        self.interrupt = interrupt or threading.Event()
        self._http = httpx.Client(
            base_url=root,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Gateway:
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

    def run(
        self,
        task: str,
        *,
        budgets: Budgets | None = None,
        agent_version: str = "",
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Run:
        """Start a run (POST /runs). Raises Stop if the gateway refuses it (kill switch, ...)."""
        body = {
            "task": task,
            "agent_version": agent_version,
            "budgets": (budgets or Budgets()).as_json(),
            # Generated when not given, so a retry after a lost answer finds the same run.
            "idempotency_key": idempotency_key or f"run-{uuid.uuid4().hex}",
            "metadata": dict(metadata or {}),
        }
        data = _run_data(self.request("POST", "/runs", body=body, retry=True), "run create")
        if data["status"] in _ENDED_STATUSES:
            # An idempotency key of an earlier run that has already ended.
            raise Stop(_text(data.get("stop_reason")) or data["status"], "the run has ended")
        return Run(self, data)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        retry: bool = False,
    ) -> dict[str, Any]:
        """One API call; any answer but a 2xx JSON object becomes Stop (see the module doc)."""
        what = f"{method} {path}"
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            try:
                response = self._http.request(
                    method,
                    path,
                    json=dict(body) if body is not None else None,
                    params=dict(params) if params is not None else None,
                    timeout=timeout if timeout is not None else self.timeout,
                )
                break
            except httpx.TransportError as exc:
                if attempt + 1 < attempts:
                    time.sleep(0.2)
                    continue
                raise Stop(
                    CONTROL_PLANE_UNAVAILABLE, f"{what}: {type(exc).__name__}: {exc}"
                ) from exc
            except httpx.HTTPError as exc:
                raise Stop(PROTOCOL_ERROR, f"{what}: {type(exc).__name__}: {exc}") from exc
        return _interpret(response, what)


class Run:
    """One run. Use it as a context manager: a normal exit finishes it ``succeeded`` (with
    :attr:`answer`); an exception finishes it ``failed`` with the error. A :class:`Stop` the
    gateway decided leaves the run as the gateway stopped it (no finish); after a client-side
    Stop (protocol error, refused request) the failed finish is best effort; an unreachable
    control plane is left to the server, which ends the silent run with ``max_seconds``.

    :attr:`data` is the latest Run the gateway returned; :attr:`stop_reason` is set once the run
    has ended (``ok`` after a successful finish).
    """

    def __init__(self, gateway: Gateway, data: dict[str, Any]) -> None:
        self._gateway = gateway
        self.data = data
        self.id: int = data["id"]
        self.answer: str | None = None
        self.stop_reason: str | None = None
        self.ended = False

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.status}>"

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def usage(self) -> dict[str, Any]:
        usage = self.data.get("usage")
        return usage if isinstance(usage, dict) else {}

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        if self.ended:
            return False
        if exc is None:
            self.finish(answer=self.answer)
            return False
        if isinstance(exc, Stop) and exc.reason == CONTROL_PLANE_UNAVAILABLE:
            # It cannot be reached; the server ends the silent run with max_seconds.
            return False
        # The original exception is what the caller needs to see; the finish is best effort.
        with contextlib.suppress(Stop):
            self.fail(f"{type(exc).__name__}: {exc}")
        return False

    # --- the agent loop ---------------------------------------------------------------------

    def step(
        self,
        *,
        model: str = "",
        tokens_in: int = 0,
        tokens_out: int = 0,
        usd: float | Decimal | str = 0,
        latency_ms: int = 0,
        summary: str = "",
    ) -> dict[str, Any]:
        """Report one model step; raises Stop when the gateway stops the run. Returns the Run."""
        self._check_open()
        what = "step"
        # No idempotency key exists for steps, so this request is never retried.
        answer = self._gateway.request(
            "POST",
            f"/runs/{self.id}/steps",
            body={
                "kind": "llm",
                "model": model,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "usd": _usd(usd),
                "latency_ms": latency_ms,
                "summary": summary,
            },
        )
        decision = answer.get("decision")
        if decision not in _STEP_DECISIONS:
            raise self._protocol(f"{what}: unknown decision {decision!r}")
        self._absorb_run(answer.get("run"), what)
        if decision == "stop":
            self._server_stop(_required_reason(answer, what), _text(answer.get("detail")))
        if answer.get("stop_reason") is not None:
            raise self._protocol(f"{what}: 'continue' with a stop_reason")
        return self.data

    def tool(
        self, name: str, args: Mapping[str, Any] | None, impl: Callable[[dict[str, Any]], T]
    ) -> T:
        """Ask the gateway, wait for an approval if needed, run ``impl(args)``, report, return.

        Raises Stop when the gateway stops the run (before ``impl`` runs), or when the reported
        result stops it. If ``impl`` raises, the failure is reported and the exception re-raised.
        """
        self._check_open()
        arguments = dict(args or {})
        answer = self._gateway.request(
            "POST",
            f"/runs/{self.id}/tool-calls",
            body={
                "tool": name,
                "args": arguments,
                # One key per call: a retry after a lost answer returns the same decision.
                "idempotency_key": f"tc-{uuid.uuid4().hex}",
            },
            retry=True,
        )
        decision, call_id = self._tool_decision(answer, name, expected_id=None)
        if decision == "pending_approval":
            decision, call_id = self._wait_for_approval(answer, name, call_id)

        started = time.monotonic()
        try:
            output = impl(arguments)
        except Exception as exc:
            self._report(
                call_id,
                name,
                ok=False,
                error=f"{type(exc).__name__}: {exc}",
                latency_ms=_elapsed_ms(started),
            )
            raise
        latency_ms = _elapsed_ms(started)
        try:
            json.dumps(output, allow_nan=False)  # as strict as httpx will be when sending it
        except (TypeError, ValueError) as exc:
            self._report(
                call_id, name, ok=False, error=f"output is not JSON: {exc}", latency_ms=latency_ms
            )
            raise TypeError(f"{name} returned output that is not JSON: {exc}") from exc
        self._report(call_id, name, ok=True, output=output, latency_ms=latency_ms)
        return output

    def finish(self, answer: str | None = None) -> dict[str, Any]:
        """End the run ``succeeded``. Raises Stop if it had already been stopped."""
        return self._finish({"status": "succeeded", "answer": answer or ""})

    def fail(self, error: str) -> dict[str, Any]:
        """End the run ``failed`` with the agent's own error."""
        return self._finish({"status": "failed", "error": error[:10_000]})

    # --- internals --------------------------------------------------------------------------

    def _finish(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_open()
        try:
            answer = self._gateway.request("POST", f"/runs/{self.id}/finish", body=body)
        except Stop as stop:
            if stop.status_code == 409:
                self.ended, self.stop_reason = True, stop.reason
            raise
        self._absorb_run(answer, "finish")
        if self.status not in _ENDED_STATUSES:
            raise self._protocol(f"finish: the run is still {self.status!r}")
        self.ended = True
        self.stop_reason = _text(self.data.get("stop_reason")) or None
        return self.data

    def _check_open(self) -> None:
        if self.ended:
            raise Stop(self.stop_reason or "ended", "this run has already ended")

    def _tool_decision(
        self, answer: dict[str, Any], tool: str, *, expected_id: int | None
    ) -> tuple[str, int]:
        what = f"tool {tool}"
        decision = answer.get("decision")
        if decision not in _TOOL_DECISIONS:
            raise self._protocol(f"{what}: unknown decision {decision!r}")
        if answer.get("tool") != tool:
            raise self._protocol(f"{what}: the answer is about {answer.get('tool')!r}")
        self._absorb_run(answer.get("run"), what)
        if decision == "stop":
            self._server_stop(_required_reason(answer, what), _text(answer.get("detail")))
        call_id = answer.get("id")
        if not _is_int(call_id) or (expected_id is not None and call_id != expected_id):
            raise self._protocol(f"{what}: bad tool-call id {call_id!r}")
        if answer.get("stop_reason") is not None:
            raise self._protocol(f"{what}: {decision!r} with a stop_reason")
        return str(decision), int(call_id)

    def _wait_for_approval(
        self, answer: dict[str, Any], tool: str, call_id: int
    ) -> tuple[str, int]:
        """Long-poll until the request is decided, bounded by its expiry plus a margin."""
        approval = answer.get("approval")
        expires_at = _parse_time(approval.get("expires_at")) if isinstance(approval, dict) else None
        if expires_at is None:
            raise self._protocol(f"tool {tool}: pending_approval without an expires_at")
        gateway = self._gateway
        left = (expires_at - datetime.now(UTC)).total_seconds()
        give_up_at = time.monotonic() + max(0.0, left) + gateway.approval_margin_seconds
        decision = "pending_approval"
        while decision == "pending_approval":
            if gateway.interrupt.is_set():
                raise Interrupted(f"interrupted while {tool} waited for approval")
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                # The server expires it too (approval_timeout) on its next sweep.
                self._server_stop(f"approval_timeout:{tool}", "no decision by the request's expiry")
            wait = max(1, math.ceil(min(gateway.poll_seconds, remaining)))
            answer = gateway.request(
                "GET",
                f"/tool-calls/{call_id}",
                params={"wait": wait},
                timeout=gateway.timeout + wait,
                retry=True,
            )
            decision, call_id = self._tool_decision(answer, tool, expected_id=call_id)
        return decision, call_id

    def _report(
        self,
        call_id: int,
        tool: str,
        *,
        ok: bool,
        output: Any = None,
        error: str = "",
        latency_ms: int,
    ) -> None:
        what = f"result of {tool}"
        answer = self._gateway.request(
            "POST",
            f"/tool-calls/{call_id}/result",
            body={"ok": ok, "output": output, "error": error[:10_000], "latency_ms": latency_ms},
            retry=True,  # the server answers an identical repeated report with the same outcome
        )
        valid = answer.get("valid")
        stop_reason = answer.get("stop_reason")
        if not isinstance(valid, bool) or not (stop_reason is None or isinstance(stop_reason, str)):
            raise self._protocol(f"{what}: no valid/stop_reason in the answer")
        self._absorb_run(answer.get("run"), what)
        if stop_reason:
            self._server_stop(stop_reason, "; ".join(map(str, answer.get("errors") or [])))
        if not valid:
            self._server_stop(f"invalid_tool_output:{tool}", "the gateway refused the output")

    def _absorb_run(self, value: Any, what: str) -> None:
        data = _run_data(value, what)
        if data["id"] != self.id:
            raise self._protocol(f"{what}: the answer is about run {data['id']}")
        self.data = data

    def _server_stop(self, reason: str, detail: str = "") -> None:
        """The gateway has stopped the run (or will): nothing more to tell it."""
        self.ended, self.stop_reason = True, reason
        raise Stop(reason, detail)

    def _protocol(self, detail: str) -> Stop:
        return Stop(PROTOCOL_ERROR, f"run {self.id}: {detail}")


# --- answer checks ----------------------------------------------------------------------------


def _interpret(response: httpx.Response, what: str) -> dict[str, Any]:
    status = response.status_code
    try:
        payload: Any = response.json()
    except ValueError:  # not JSON, or not text at all
        payload = None
    if status >= 500:
        detail = _text(payload.get("detail")) if isinstance(payload, dict) else ""
        raise Stop(
            CONTROL_PLANE_UNAVAILABLE,
            f"{what}: HTTP {status}" + (f" ({detail})" if detail else ""),
            status_code=status,
        )
    if 200 <= status < 300:
        if not isinstance(payload, dict):
            raise Stop(PROTOCOL_ERROR, f"{what}: HTTP {status} without a JSON object")
        return payload
    if 400 <= status < 500 and isinstance(payload, dict) and isinstance(payload.get("error"), str):
        stop_reason = payload.get("stop_reason")
        if status == 409 and isinstance(stop_reason, str) and stop_reason:
            reason = stop_reason
        else:
            reason = payload["error"] or PROTOCOL_ERROR
        raise Stop(reason, f"{what}: {_text(payload.get('detail'))}", status_code=status)
    raise Stop(PROTOCOL_ERROR, f"{what}: unexpected HTTP {status}", status_code=status)


def _run_data(value: Any, what: str) -> dict[str, Any]:
    if (
        not isinstance(value, dict)
        or not _is_int(value.get("id"))
        or not isinstance(value.get("status"), str)
    ):
        raise Stop(PROTOCOL_ERROR, f"{what}: the answer carries no valid run")
    return value


def _required_reason(answer: dict[str, Any], what: str) -> str:
    reason = answer.get("stop_reason")
    if not isinstance(reason, str) or not reason:
        raise Stop(PROTOCOL_ERROR, f"{what}: 'stop' without a stop_reason")
    return reason


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _usd(value: float | Decimal | str) -> str:
    """The gateway takes at most 6 decimal places; float sums such as 0.1 + 0.2 have more."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise ValueError(f"usd must be a finite number, not {value!r}")
    return format(amount.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP), "f")


def _elapsed_ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))
