"""The blocking client: :class:`Gateway` and :class:`Run` (one thread, or one per agent)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar

import httpx

from opsconsole_client._protocol import (
    APPROVAL_MARGIN_SECONDS,
    CONTROL_PLANE_UNAVAILABLE,
    LONG_POLL_SECONDS,
    PROTOCOL_ERROR,
    Budgets,
    Flag,
    Interrupted,
    Request,
    RetryPolicy,
    RunState,
    StepTicket,
    Stop,
    ToolDecision,
    api_root,
    call_key,
    decode,
    elapsed_ms,
    error_text,
    interpret,
    output_check,
    run_create_body,
    started_run,
)

T = TypeVar("T")
P = ParamSpec("P")

USER_AGENT = "opsconsole-client/0.2 (sync)"


class Gateway:
    """A connection to the gateway with one agent's key.

    ``base_url`` is the console's address (``http://host:8000``); ``/api/v1`` is added unless it
    is already there. ``transport`` replaces httpx's (tests use ``httpx.MockTransport`` or
    ``httpx.WSGITransport``). ``retry_policy`` bounds the waits after a 429 and the retries
    after a transport error. ``interrupt``, when set, makes a waiting call raise
    :class:`Interrupted` within ``poll_seconds``.
    """

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        retry_policy: RetryPolicy | None = None,
        poll_seconds: float = LONG_POLL_SECONDS,
        approval_margin_seconds: float = APPROVAL_MARGIN_SECONDS,
        interrupt: Flag | None = None,
    ) -> None:
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self.poll_seconds = max(1.0, min(poll_seconds, 30.0))
        self.approval_margin_seconds = approval_margin_seconds
        self.interrupt: Flag = interrupt or threading.Event()
        # A seam for tests: how the client waits before a retry.
        self.sleep: Callable[[float], None] = time.sleep
        self._http = httpx.Client(
            base_url=api_root(base_url),
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
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
        agent_version: str | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Run:
        """Start a run (``POST /runs``); raises Stop if the gateway refuses it (kill switch, ...).

        The same ``idempotency_key`` from another process returns the same run while it is
        running: that is how a restarted agent resumes its run."""
        body = run_create_body(task, budgets, agent_version, idempotency_key, metadata)
        answer = self.send(Request("POST", "/runs", body=body, safe=True))
        return Run(self, started_run(answer))

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
        """One API call; any answer but a 2xx JSON object becomes Stop."""
        return self.send(
            Request(
                method,
                path,
                body=dict(body) if body is not None else None,
                params=dict(params) if params is not None else None,
                timeout=timeout,
                safe=retry,
            )
        )

    def send(self, request: Request) -> dict[str, Any]:
        policy = self.retry_policy
        failures = 0
        rate_waited = 0.0
        while True:
            try:
                response = self._http.request(
                    request.method,
                    request.path,
                    json=request.body,
                    params=request.params,
                    timeout=request.timeout if request.timeout is not None else self.timeout,
                )
            except httpx.TransportError as exc:
                failures += 1
                delay = policy.transport_delay(failures) if request.safe else None
                if delay is None:
                    raise Stop(
                        CONTROL_PLANE_UNAVAILABLE,
                        f"{request.what}: {type(exc).__name__}: {exc}",
                    ) from exc
                self._wait(delay)
                continue
            except httpx.HTTPError as exc:
                raise Stop(PROTOCOL_ERROR, f"{request.what}: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 429:
                delay = policy.rate_limit_delay(response.headers.get("Retry-After"), rate_waited)
                if delay is not None:
                    rate_waited += delay
                    self._wait(delay)
                    continue
            return interpret(response.status_code, decode(response.content), request.what)

    def _wait(self, seconds: float) -> None:
        if self.interrupt.is_set():
            raise Interrupted("interrupted before a retry")
        self.sleep(seconds)


class Run(RunState):
    """One run. Use it as a context manager.

    Leaving the block normally finishes the run ``succeeded`` (with :attr:`answer`); an
    exception finishes it ``failed``. Once any call of the run has raised :class:`Stop`, the
    run is over for the client: :attr:`stopped` holds that Stop, every later call raises it
    again, and leaving the block raises it, even if the body swallowed it and returned
    normally. So whatever an agent framework does with the Stop inside a tool, the caller of
    the block learns that the run was stopped, and why. (KeyboardInterrupt and other
    ``BaseException`` exits pass through unchanged.)

    :attr:`data` is the latest Run the gateway returned; :attr:`stop_reason` is set once the run
    has ended (``ok`` after a successful finish).
    """

    def __init__(self, gateway: Gateway, data: dict[str, Any]) -> None:
        super().__init__(data)
        self._gateway = gateway

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        plan = self.exit_plan(exc)
        if plan == "finish":
            self.finish(answer=self.answer)  # a refusal raises the run's Stop from here
        elif plan == "fail":
            # Best effort; a 409 naming a stop reason is remembered, and raised below.
            with contextlib.suppress(Stop):
                self.fail(self.exit_error(exc))
        stop = self.exit_raise(exc)
        if stop is not None and exc is not None:
            raise stop from exc  # what the body raised after the Stop, as its cause
        if stop is not None:
            raise stop
        return False

    def _send(self, request: Request) -> dict[str, Any]:
        try:
            return self._gateway.send(request)
        except Stop as stop:
            raise self.remember(stop) from stop.__cause__

    def _check(self, check: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``check(*args, **kwargs)``, its Stop remembered."""
        try:
            return check(*args, **kwargs)
        except Stop as stop:
            raise self.remember(stop) from None

    # --- model steps --------------------------------------------------------------------------

    def gate(
        self,
        *,
        model: str | None = None,
        estimate_tokens: int | None = None,
        estimate_usd: float | Decimal | str | None = None,
    ) -> StepTicket:
        """Ask before a model call. The step is counted now; raises Stop when the call would
        break ``max_steps``, ``max_seconds``, ``max_usd`` or ``max_tokens`` (usage so far plus
        the estimate), so the call that would break a budget is never made. Report what the
        call used with :meth:`usage`."""
        self.check_open()
        request = self.gate_request(
            model=model, estimate_tokens=estimate_tokens, estimate_usd=estimate_usd
        )
        answer = self._send(request)
        return self._check(self.gate_answer, answer, model)

    def usage(
        self,
        ticket: StepTicket,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        usd: float | Decimal | str = 0,
        latency_ms: int | None = None,
        summary: str = "",
    ) -> dict[str, Any]:
        """Report what a gated model call used; raises Stop if that took the run past
        ``max_tokens`` or ``max_usd`` (the usage is recorded all the same)."""
        self.check_open()
        request = self.usage_request(
            ticket,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            usd=usd,
            latency_ms=latency_ms,
            summary=summary,
        )
        answer = self._send(request)
        return self._check(self.step_answer, answer, "step usage")

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
        """Report one model step after the call (the older protocol; :meth:`gate` asks before
        it). Raises Stop when the gateway stops the run. Returns the Run."""
        self.check_open()
        request = self.step_request(
            model=model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            usd=usd,
            latency_ms=latency_ms,
            summary=summary,
        )
        answer = self._send(request)
        return self._check(self.step_answer, answer)

    # --- tool calls ---------------------------------------------------------------------------

    def tool(
        self,
        name: str,
        args: Mapping[str, Any] | None,
        fn: Callable[[dict[str, Any]], T],
        *,
        call_id: str | None = None,
    ) -> T:
        """Ask the gateway, wait for an approval if needed, run ``fn(args)``, report, return.

        Raises Stop when the gateway stops the run (before ``fn`` runs), or when the reported
        result stops it. If ``fn`` raises, the failure is reported and the exception re-raised.
        ``call_id`` is the caller's key for this call (the model's ``tool_call_id``): asking
        again with it, from this process or another, returns the first decision and spends
        nothing.
        """
        decision = self.decide(name, args, call_id=call_id)
        try:
            output = fn(dict(decision.args))
        except Exception as exc:
            self.report(decision, error=exc)
            raise
        self.report(decision, result=output)
        return output

    def decide(
        self,
        name: str,
        args: Mapping[str, Any] | None,
        *,
        call_id: str | None = None,
        wait: bool = True,
    ) -> ToolDecision:
        """The gateway's decision on a tool call, before the tool runs: an ``allow`` decision
        (after waiting for people when the call needs an approval), or Stop.

        With ``wait=False`` a call that needs an approval returns at once with decision
        ``pending_approval``; ask again with the same ``call_id`` to wait for (or read) the
        verdict, from this process or a restarted one.
        """
        self.check_open()
        arguments = dict(args or {})
        key = call_key(self.id, call_id)
        answer = self._send(self.tool_call_request(name, arguments, key))
        decision, tool_call_id = self._check(self.tool_answer, answer, name, expected_id=None)
        if decision == "pending_approval":
            if not wait:
                approval = answer.get("approval")
                return ToolDecision(
                    tool_call_id,
                    name,
                    arguments,
                    "pending_approval",
                    call_id,
                    key,
                    approval if isinstance(approval, dict) else None,
                )
            answer = self._wait_for_approval(answer, name, tool_call_id)
        approval = answer.get("approval")
        return ToolDecision(
            tool_call_id,
            name,
            arguments,
            "allow",
            call_id,
            key,
            approval if isinstance(approval, dict) else None,
        )

    def report(
        self,
        decision: ToolDecision,
        *,
        result: Any = None,
        error: BaseException | str | None = None,
        latency_ms: int | None = None,
    ) -> None:
        """Report what an allowed call did: its ``result`` (JSON), or the ``error`` it raised.
        Raises Stop when the result stops the run, TypeError when the result is not JSON (the
        failure is reported)."""
        self.check_open()
        if not decision.allowed:
            raise ValueError(
                f"{decision.tool} was not allowed ({decision.decision}); do not run it"
            )
        latency = elapsed_ms(decision.decided_at) if latency_ms is None else latency_ms
        problem = None if error is not None else output_check(decision.tool, result)
        if error is not None or problem is not None:
            message = error_text(error) if error is not None else str(problem)
            request = self.report_request(
                decision, ok=False, output=None, error=message, latency_ms=latency
            )
        else:
            request = self.report_request(
                decision, ok=True, output=result, error="", latency_ms=latency
            )
        answer = self._send(request)
        self._check(self.report_answer, answer, decision.tool)
        if problem is not None:
            raise TypeError(f"{decision.tool} returned output that is not JSON: {problem}")

    def _wait_for_approval(
        self, answer: dict[str, Any], tool: str, tool_call_id: int
    ) -> dict[str, Any]:
        """Long-poll until the request is decided, bounded by its expiry plus a margin."""
        gateway = self._gateway
        give_up_at = self._check(
            self.approval_deadline, answer, tool, gateway.approval_margin_seconds
        )
        decision = "pending_approval"
        while decision == "pending_approval":
            if gateway.interrupt.is_set():
                raise Interrupted(f"interrupted while {tool} waited for approval")
            request = self._check(
                self.poll_request,
                tool,
                tool_call_id,
                give_up_at,
                gateway.poll_seconds,
                gateway.timeout,
            )
            answer = self._send(request)
            decision, tool_call_id = self._check(
                self.tool_answer, answer, tool, expected_id=tool_call_id
            )
        return answer

    # --- the end ------------------------------------------------------------------------------

    def finish(self, answer: str | None = None) -> dict[str, Any]:
        """End the run ``succeeded``. Raises Stop if it had already been stopped."""
        return self._finish({"status": "succeeded", "answer": answer or ""})

    def fail(self, error: str) -> dict[str, Any]:
        """End the run ``failed`` with the agent's own error."""
        return self._finish({"status": "failed", "error": error[:10_000]})

    def _finish(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.ended or (self.stopped is not None and body["status"] == "succeeded"):
            self.check_open()
        answer = self._send(self.finish_request(body))
        return self._check(self.finish_answer, answer)
