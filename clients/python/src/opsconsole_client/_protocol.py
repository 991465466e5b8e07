"""What the sync and the asyncio clients share: the stop, the request and answer shapes, the
checks every answer goes through, the retry policy, and the run's bookkeeping. No I/O here:
``_sync`` and ``_async`` send the requests these functions describe and feed the answers back.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal, Protocol, TypeGuard

# The client's own stop reasons, beside the gateway's closed vocabulary.
CONTROL_PLANE_UNAVAILABLE: Final = "control_plane_unavailable"
PROTOCOL_ERROR: Final = "protocol_error"
RATE_LIMITED: Final = "rate_limited"

API_PREFIX: Final = "/api/v1"
# The server accepts waits up to 30 s; 25 s leaves room for the answer to travel.
LONG_POLL_SECONDS: Final = 25.0
# How long past an approval's expires_at the client keeps waiting for the server to say so.
APPROVAL_MARGIN_SECONDS: Final = 30.0

TOOL_DECISIONS: Final = frozenset({"allow", "pending_approval", "stop"})
STEP_DECISIONS: Final = frozenset({"continue", "stop"})
ENDED_STATUSES: Final = frozenset({"succeeded", "failed", "stopped"})
# Client-side stops after which the run cannot be told anything: the server ends it itself
# (a silent run is stopped with max_seconds).
UNREACHABLE: Final = frozenset({CONTROL_PLANE_UNAVAILABLE, RATE_LIMITED})
# The server keeps idempotency keys up to 200 characters.
MAX_KEY_LENGTH: Final = 200


class Stop(BaseException):
    """The run must not go on.

    A ``BaseException``, not an ``Exception``: agent frameworks catch ``Exception`` around tool
    bodies (and feed it to the model as an error message); they do not catch this. The run
    context re-raises it on exit even if something swallowed it (see :class:`Run`).

    ``reason`` is a stop reason from the gateway's vocabulary (``max_tool_calls``,
    ``tool_denied:browser.open``, ...) or one of the client's own: ``control_plane_unavailable``
    (a 5xx, a 503 included, or the network), ``protocol_error`` (an answer it cannot interpret),
    ``rate_limited`` (a 429 past the retry policy's wait), or the error code of another refused
    request (``unauthenticated``, ``idempotency_key_reused``, ...). ``status_code`` is the HTTP
    status when there was one; ``run_id`` the run it is about, when known; ``run_ended`` whether
    the gateway said the run has ended (a stop decision, or a 409 naming the stop reason).
    """

    run_ended: bool = False

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        status_code: int | None = None,
        run_id: int | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status_code = status_code
        self.run_id = run_id


class Interrupted(BaseException):
    """The client's ``interrupt`` flag was set while it waited (for an approval, or before a
    retry). Like :class:`Stop`, a ``BaseException``: it means the process wants to stop, and an
    agent framework must not swallow it. Leaving the run context with it finishes the run
    ``failed``, which also withdraws a pending approval request."""


class Flag(Protocol):
    """A ``threading.Event`` or an ``asyncio.Event``: only ``is_set`` is read."""

    def is_set(self) -> bool: ...


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


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries; nothing here ever turns a refusal into an allow.

    - A 429 is retried after its ``Retry-After`` (seconds or an HTTP date) as long as the waits
      for one request add up to at most ``max_retry_after_seconds``; past that, or without a
      usable ``Retry-After``, it is ``Stop("rate_limited")``. The server did nothing with a
      refused request, so any request may be repeated.
    - A transport error (connection refused, timeout, dropped answer) is retried, up to
      ``attempts`` tries in all, with exponential backoff and jitter (a delay between half and
      all of ``min(backoff_max, backoff_base * 2**(n-1))`` before retry ``n``), only for
      requests that are safe to repeat: those with an idempotency key, result and usage
      reports the server answers identically, and polls. Then ``Stop("control_plane_unavailable")``.
    - A 5xx (a 503 included) is never retried: it is ``Stop("control_plane_unavailable")``.
    """

    max_retry_after_seconds: float = 30.0
    attempts: int = 3
    backoff_base: float = 0.2
    backoff_max: float = 5.0

    def transport_delay(
        self, failures: int, jitter: Callable[[], float] = random.random
    ) -> float | None:
        """The wait before trying again after ``failures`` failed tries, or None to give up."""
        if failures >= max(1, self.attempts):
            return None
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** (failures - 1))
        return ceiling / 2 + jitter() * ceiling / 2

    def rate_limit_delay(self, retry_after: str | None, waited: float) -> float | None:
        """The wait a 429 asks for, or None when it is unusable or past the bound."""
        seconds = parse_retry_after(retry_after)
        if seconds is None or waited + seconds > self.max_retry_after_seconds:
            return None
        return seconds


def parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class ToolDecision:
    """The gateway's decision on one tool call: ``allow`` (run the tool, then
    :meth:`Run.report`), or ``pending_approval`` (only from ``decide(..., wait=False)``).

    ``call_id`` is the caller's key for the call (the model's ``tool_call_id``);
    ``tool_call_id`` the gateway's id of it; ``approval`` the approval request, if the call
    needed one."""

    tool_call_id: int
    tool: str
    args: dict[str, Any]
    decision: Literal["allow", "pending_approval"]
    call_id: str | None
    idempotency_key: str
    approval: dict[str, Any] | None = None
    decided_at: float = field(default_factory=time.monotonic, compare=False)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @property
    def expires_at(self) -> datetime | None:
        """When a pending approval request expires."""
        return parse_time(self.approval.get("expires_at")) if self.approval else None


@dataclass(frozen=True)
class StepTicket:
    """A model call the gateway let through (:meth:`Run.gate`); report its usage with it."""

    id: int
    step: int
    model: str
    issued_at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True)
class Request:
    """One API call; ``safe`` ones are retried after a transport error."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    timeout: float | None = None
    safe: bool = False

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}"


def api_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root if root.endswith(API_PREFIX) else root + API_PREFIX


def interpret(status: int, payload: Any, what: str) -> dict[str, Any]:
    """A 2xx JSON object, or the Stop the answer means (see the package's documentation)."""
    if status >= 500:
        detail = text(payload.get("detail")) if isinstance(payload, dict) else ""
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
        ended = status == 409 and isinstance(stop_reason, str) and bool(stop_reason)
        reason = str(stop_reason) if ended else (payload["error"] or PROTOCOL_ERROR)
        stop = Stop(reason, f"{what}: {text(payload.get('detail'))}", status_code=status)
        stop.run_ended = ended
        raise stop
    raise Stop(PROTOCOL_ERROR, f"{what}: unexpected HTTP {status}", status_code=status)


def decode(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:  # not JSON, or not text at all
        return None


def run_data(value: Any, what: str) -> dict[str, Any]:
    if (
        not isinstance(value, dict)
        or not is_int(value.get("id"))
        or not isinstance(value.get("status"), str)
    ):
        raise Stop(PROTOCOL_ERROR, f"{what}: the answer carries no valid run")
    return value


def run_create_body(
    task: str,
    budgets: Budgets | None,
    agent_version: str | None,
    idempotency_key: str | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "budgets": (budgets or Budgets()).as_json(),
        # Generated when not given, so a retry after a lost answer finds the same run.
        "idempotency_key": idempotency_key or f"run-{uuid.uuid4().hex}",
        "metadata": dict(metadata or {}),
    }
    if agent_version is not None:
        body["agent_version"] = agent_version
    return body


def started_run(answer: dict[str, Any]) -> dict[str, Any]:
    data = run_data(answer, "run create")
    if data["status"] in ENDED_STATUSES:
        # An idempotency key of an earlier run that has already ended.
        raise Stop(
            text(data.get("stop_reason")) or data["status"],
            "the run has ended",
            run_id=data["id"],
        )
    return data


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def usd_text(value: float | Decimal | str) -> str:
    """The gateway takes at most 6 decimal places; float sums such as 0.1 + 0.2 have more."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise ValueError(f"usd must be a finite number, not {value!r}")
    return format(amount.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP), "f")


def elapsed_ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


def call_key(run_id: int, call_id: str | None) -> str:
    """The wire idempotency key of a tool call. From the caller's ``call_id`` it is the same in
    every process (a resumed graph asks again and gets the first answer, spending nothing);
    without one it is random (a retry after a lost answer still reuses it)."""
    if call_id is None:
        return f"tc-{uuid.uuid4().hex}"
    key = f"call:{run_id}:{call_id}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return f"call:{run_id}:sha256:{hashlib.sha256(call_id.encode()).hexdigest()}"


class RunState:
    """One run's bookkeeping and the checks of its answers, shared by :class:`Run` and
    :class:`AsyncRun` (which do the I/O)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.id: int = data["id"]
        self.answer: str | None = None
        self.stop_reason: str | None = None
        self.ended = False
        #: The first Stop any call of this run raised (the gateway's or the client's own); the
        #: run context re-raises it on exit, whatever the body did with it.
        self.stopped: Stop | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status}>"

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def used(self) -> dict[str, Any]:
        """The run's usage counters as the gateway last said (``steps``, ``tokens``, ...)."""
        usage = self.data.get("usage")
        return usage if isinstance(usage, dict) else {}

    # --- the stop, remembered -------------------------------------------------------------

    def remember(self, stop: Stop) -> Stop:
        """Keep the first Stop of the run; once stopped, every later call raises that one."""
        if stop.run_id is None:
            stop.run_id = self.id
        if self.stopped is None:
            self.stopped = stop
        if stop.run_ended:
            self.ended, self.stop_reason = True, stop.reason
        return self.stopped

    def check_open(self) -> None:
        if self.stopped is not None:
            raise self.stopped
        if self.ended:
            raise Stop(self.stop_reason or "ended", "this run has already ended", run_id=self.id)

    def server_stop(self, reason: str, detail: str = "") -> Stop:
        """The gateway has stopped the run (or will): nothing more to tell it."""
        self.ended, self.stop_reason = True, reason
        stop = Stop(reason, detail, run_id=self.id)
        stop.run_ended = True
        return stop

    def protocol(self, detail: str) -> Stop:
        return Stop(PROTOCOL_ERROR, f"run {self.id}: {detail}", run_id=self.id)

    def exit_plan(self, exc: BaseException | None) -> Literal["finish", "fail", "none"]:
        """What leaving the run context tells the gateway before re-raising a remembered Stop."""
        if self.ended:
            return "none"
        if self.stopped is not None:
            # A client-side stop (a protocol error, a refused request) of a run the gateway still
            # thinks is running: fail it, best effort. An unreachable gateway is left to reap it.
            return "none" if self.stopped.reason in UNREACHABLE else "fail"
        return "finish" if exc is None else "fail"

    def exit_error(self, exc: BaseException | None) -> str:
        if exc is None and self.stopped is not None:
            return f"stopped: {self.stopped}"
        return f"{type(exc).__name__}: {exc}"[:10_000]

    def exit_raise(self, exc: BaseException | None) -> Stop | None:
        """The Stop to raise on leaving the context: the remembered one, unless the body is
        already leaving with it, or with a KeyboardInterrupt-like BaseException of its own."""
        stop = self.stopped
        if stop is None or exc is stop:
            return None
        if exc is not None and not isinstance(exc, Exception | Stop | Interrupted):
            return None  # KeyboardInterrupt, SystemExit, asyncio.CancelledError pass through
        return stop

    def absorb_run(self, value: Any, what: str) -> None:
        data = run_data(value, what)
        if data["id"] != self.id:
            raise self.protocol(f"{what}: the answer is about run {data['id']}")
        self.data = data

    # --- requests and their answers ---------------------------------------------------------

    def step_request(
        self,
        *,
        model: str,
        tokens_in: int,
        tokens_out: int,
        usd: float | Decimal | str,
        latency_ms: int,
        summary: str,
    ) -> Request:
        # No idempotency key exists for these steps, so this request is never retried.
        return Request(
            "POST",
            f"/runs/{self.id}/steps",
            body={
                "kind": "llm",
                "model": model,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "usd": usd_text(usd),
                "latency_ms": latency_ms,
                "summary": summary,
            },
        )

    def step_answer(self, answer: dict[str, Any], what: str = "step") -> dict[str, Any]:
        decision = answer.get("decision")
        if decision not in STEP_DECISIONS:
            raise self.protocol(f"{what}: unknown decision {decision!r}")
        self.absorb_run(answer.get("run"), what)
        if decision == "stop":
            raise self.server_stop(required_reason(answer, what), text(answer.get("detail")))
        if answer.get("stop_reason") is not None:
            raise self.protocol(f"{what}: 'continue' with a stop_reason")
        return self.data

    def gate_request(
        self,
        *,
        model: str | None,
        estimate_tokens: int | None,
        estimate_usd: float | Decimal | str | None,
    ) -> Request:
        body: dict[str, Any] = {"idempotency_key": f"gate-{uuid.uuid4().hex}"}
        if model is not None:
            body["model"] = model
        if estimate_tokens is not None:
            body["estimate_tokens"] = estimate_tokens
        if estimate_usd is not None:
            body["estimate_usd"] = usd_text(estimate_usd)
        return Request("POST", f"/runs/{self.id}/steps/gate", body=body, safe=True)

    def gate_answer(self, answer: dict[str, Any], model: str | None) -> StepTicket:
        what = "step gate"
        self.step_answer(answer, what)
        ticket = answer.get("ticket")
        step = answer.get("step")
        if not is_int(ticket) or not is_int(step):
            raise self.protocol(f"{what}: 'continue' without a ticket")
        return StepTicket(id=ticket, step=step, model=model or "")

    def usage_request(
        self,
        ticket: StepTicket,
        *,
        tokens_in: int,
        tokens_out: int,
        usd: float | Decimal | str,
        latency_ms: int | None,
        summary: str,
    ) -> Request:
        return Request(
            "POST",
            f"/runs/{self.id}/steps/{ticket.id}/usage",
            body={
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "usd": usd_text(usd),
                "latency_ms": elapsed_ms(ticket.issued_at) if latency_ms is None else latency_ms,
                "summary": summary,
            },
            safe=True,  # the server answers an identical repeated report with the same outcome
        )

    def tool_call_request(self, name: str, args: dict[str, Any], key: str) -> Request:
        return Request(
            "POST",
            f"/runs/{self.id}/tool-calls",
            body={"tool": name, "args": args, "idempotency_key": key},
            safe=True,
        )

    def tool_answer(
        self, answer: dict[str, Any], tool: str, *, expected_id: int | None
    ) -> tuple[str, int]:
        what = f"tool {tool}"
        decision = answer.get("decision")
        if decision not in TOOL_DECISIONS:
            raise self.protocol(f"{what}: unknown decision {decision!r}")
        if answer.get("tool") != tool:
            raise self.protocol(f"{what}: the answer is about {answer.get('tool')!r}")
        self.absorb_run(answer.get("run"), what)
        if decision == "stop":
            raise self.server_stop(required_reason(answer, what), text(answer.get("detail")))
        call_id = answer.get("id")
        if not is_int(call_id) or (expected_id is not None and call_id != expected_id):
            raise self.protocol(f"{what}: bad tool-call id {call_id!r}")
        if answer.get("stop_reason") is not None:
            raise self.protocol(f"{what}: {decision!r} with a stop_reason")
        return str(decision), int(call_id)

    def approval_deadline(self, answer: dict[str, Any], tool: str, margin: float) -> float:
        """The monotonic time past which the client stops waiting for a decision."""
        approval = answer.get("approval")
        expires_at = parse_time(approval.get("expires_at")) if isinstance(approval, dict) else None
        if expires_at is None:
            raise self.protocol(f"tool {tool}: pending_approval without an expires_at")
        left = (expires_at - datetime.now(UTC)).total_seconds()
        return time.monotonic() + max(0.0, left) + margin

    def poll_request(
        self, tool: str, tool_call_id: int, give_up_at: float, poll_seconds: float, timeout: float
    ) -> Request:
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            # The server expires it too (approval_timeout) on its next sweep.
            raise self.server_stop(
                f"approval_timeout:{tool}", "no decision by the request's expiry"
            )
        wait = max(1, math.ceil(min(poll_seconds, remaining)))
        return Request(
            "GET",
            f"/tool-calls/{tool_call_id}",
            params={"wait": wait},
            timeout=timeout + wait,
            safe=True,
        )

    def report_request(
        self, decision: ToolDecision, *, ok: bool, output: Any, error: str, latency_ms: int
    ) -> Request:
        return Request(
            "POST",
            f"/tool-calls/{decision.tool_call_id}/result",
            body={"ok": ok, "output": output, "error": error[:10_000], "latency_ms": latency_ms},
            safe=True,  # the server answers an identical repeated report with the same outcome
        )

    def report_answer(self, answer: dict[str, Any], tool: str) -> None:
        what = f"result of {tool}"
        valid = answer.get("valid")
        stop_reason = answer.get("stop_reason")
        if not isinstance(valid, bool) or not (stop_reason is None or isinstance(stop_reason, str)):
            raise self.protocol(f"{what}: no valid/stop_reason in the answer")
        self.absorb_run(answer.get("run"), what)
        if stop_reason:
            raise self.server_stop(stop_reason, "; ".join(map(str, answer.get("errors") or [])))
        if not valid:
            raise self.server_stop(f"invalid_tool_output:{tool}", "the gateway refused the output")

    def finish_request(self, body: dict[str, Any]) -> Request:
        return Request("POST", f"/runs/{self.id}/finish", body=body)

    def finish_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.absorb_run(answer, "finish")
        if self.status not in ENDED_STATUSES:
            raise self.protocol(f"finish: the run is still {self.status!r}")
        self.ended = True
        self.stop_reason = text(self.data.get("stop_reason")) or None
        return self.data


def required_reason(answer: dict[str, Any], what: str) -> str:
    reason = answer.get("stop_reason")
    if not isinstance(reason, str) or not reason:
        raise Stop(PROTOCOL_ERROR, f"{what}: 'stop' without a stop_reason")
    return reason


def output_check(tool: str, output: Any) -> str | None:
    """Why ``output`` cannot be reported (it is not JSON), or None."""
    try:
        json.dumps(output, allow_nan=False)  # as strict as httpx will be when sending it
    except (TypeError, ValueError) as exc:
        return f"output is not JSON: {exc}"
    return None


def error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return error
