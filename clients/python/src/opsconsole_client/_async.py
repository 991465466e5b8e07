"""The asyncio client: :class:`AsyncGateway` and :class:`AsyncRun`, the same surface as the
blocking one with coroutines. Nothing here blocks the event loop: requests go through
``httpx.AsyncClient``, waits are ``asyncio.sleep``, an approval wait is an async long poll."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Generator, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

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

USER_AGENT = "opsconsole-client/0.2 (asyncio)"


class AsyncGateway:
    """:class:`Gateway` for asyncio. ``interrupt`` may be an ``asyncio.Event`` or a
    ``threading.Event``; cancelling the task that waits works too."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_policy: RetryPolicy | None = None,
        poll_seconds: float = LONG_POLL_SECONDS,
        approval_margin_seconds: float = APPROVAL_MARGIN_SECONDS,
        interrupt: Flag | None = None,
    ) -> None:
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self.poll_seconds = max(1.0, min(poll_seconds, 30.0))
        self.approval_margin_seconds = approval_margin_seconds
        self.interrupt: Flag = interrupt or asyncio.Event()
        # A seam for tests: how the client waits before a retry.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._http = httpx.AsyncClient(
            base_url=api_root(base_url),
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncGateway:
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

    def run(
        self,
        task: str,
        *,
        budgets: Budgets | None = None,
        agent_version: str | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RunStart:
        """Start a run: ``async with gateway.run(...) as run:`` or ``run = await gateway.run(...)``.
        Raises Stop if the gateway refuses it."""
        body = run_create_body(task, budgets, agent_version, idempotency_key, metadata)
        return RunStart(self, body)

    async def request(
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
        return await self.send(
            Request(
                method,
                path,
                body=dict(body) if body is not None else None,
                params=dict(params) if params is not None else None,
                timeout=timeout,
                safe=retry,
            )
        )

    async def send(self, request: Request) -> dict[str, Any]:
        policy = self.retry_policy
        failures = 0
        rate_waited = 0.0
        while True:
            try:
                response = await self._http.request(
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
                await self._wait(delay)
                continue
            except httpx.HTTPError as exc:
                raise Stop(PROTOCOL_ERROR, f"{request.what}: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 429:
                delay = policy.rate_limit_delay(response.headers.get("Retry-After"), rate_waited)
                if delay is not None:
                    rate_waited += delay
                    await self._wait(delay)
                    continue
            return interpret(response.status_code, decode(response.content), request.what)

    async def _wait(self, seconds: float) -> None:
        if self.interrupt.is_set():
            raise Interrupted("interrupted before a retry")
        await self.sleep(seconds)


class RunStart:
    """What :meth:`AsyncGateway.run` returns: await it for the run, or use it with
    ``async with`` (the run is started on entering, and ended as :class:`AsyncRun` says)."""

    def __init__(self, gateway: AsyncGateway, body: dict[str, Any]) -> None:
        self._gateway = gateway
        self._body = body
        self._run: AsyncRun | None = None

    async def start(self) -> AsyncRun:
        if self._run is None:
            answer = await self._gateway.send(Request("POST", "/runs", body=self._body, safe=True))
            self._run = AsyncRun(self._gateway, started_run(answer))
        return self._run

    def __await__(self) -> Generator[Any, None, AsyncRun]:
        return self.start().__await__()

    async def __aenter__(self) -> AsyncRun:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        assert self._run is not None
        return await self._run.__aexit__(exc_type, exc, traceback)


class AsyncRun(RunState):
    """:class:`Run` for asyncio: the same context (``async with``), the same remembered Stop,
    re-raised on exit whatever the body did with it."""

    def __init__(self, gateway: AsyncGateway, data: dict[str, Any]) -> None:
        super().__init__(data)
        self._gateway = gateway

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        plan = self.exit_plan(exc)
        if plan == "finish":
            await self.finish(answer=self.answer)  # a refusal raises the run's Stop from here
        elif plan == "fail":
            # Best effort; a 409 naming a stop reason is remembered, and raised below.
            with contextlib.suppress(Stop):
                await self.fail(self.exit_error(exc))
        stop = self.exit_raise(exc)
        if stop is not None and exc is not None:
            raise stop from exc  # what the body raised after the Stop, as its cause
        if stop is not None:
            raise stop
        return False

    async def _send(self, request: Request) -> dict[str, Any]:
        try:
            return await self._gateway.send(request)
        except Stop as stop:
            raise self.remember(stop) from stop.__cause__

    def _check(self, check: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``check(*args, **kwargs)``, its Stop remembered."""
        try:
            return check(*args, **kwargs)
        except Stop as stop:
            raise self.remember(stop) from None

    # --- model steps --------------------------------------------------------------------------

    async def gate(
        self,
        *,
        model: str | None = None,
        estimate_tokens: int | None = None,
        estimate_usd: float | Decimal | str | None = None,
    ) -> StepTicket:
        """See :meth:`Run.gate`."""
        self.check_open()
        request = self.gate_request(
            model=model, estimate_tokens=estimate_tokens, estimate_usd=estimate_usd
        )
        answer = await self._send(request)
        return self._check(self.gate_answer, answer, model)

    async def usage(
        self,
        ticket: StepTicket,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        usd: float | Decimal | str = 0,
        latency_ms: int | None = None,
        summary: str = "",
    ) -> dict[str, Any]:
        """See :meth:`Run.usage`."""
        self.check_open()
        request = self.usage_request(
            ticket,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            usd=usd,
            latency_ms=latency_ms,
            summary=summary,
        )
        answer = await self._send(request)
        return self._check(self.step_answer, answer, "step usage")

    async def step(
        self,
        *,
        model: str = "",
        tokens_in: int = 0,
        tokens_out: int = 0,
        usd: float | Decimal | str = 0,
        latency_ms: int = 0,
        summary: str = "",
    ) -> dict[str, Any]:
        """See :meth:`Run.step`."""
        self.check_open()
        request = self.step_request(
            model=model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            usd=usd,
            latency_ms=latency_ms,
            summary=summary,
        )
        answer = await self._send(request)
        return self._check(self.step_answer, answer)

    # --- tool calls ---------------------------------------------------------------------------

    @overload
    async def tool(
        self,
        name: str,
        args: Mapping[str, Any] | None,
        fn: Callable[[dict[str, Any]], Awaitable[T]],
        *,
        call_id: str | None = None,
    ) -> T: ...

    @overload
    async def tool(
        self,
        name: str,
        args: Mapping[str, Any] | None,
        fn: Callable[[dict[str, Any]], T],
        *,
        call_id: str | None = None,
    ) -> T: ...

    async def tool(
        self,
        name: str,
        args: Mapping[str, Any] | None,
        fn: Callable[[dict[str, Any]], Any],
        *,
        call_id: str | None = None,
    ) -> Any:
        """See :meth:`Run.tool`; ``fn`` may be a coroutine function or a plain one."""
        decision = await self.decide(name, args, call_id=call_id)
        try:
            output = fn(dict(decision.args))
            if inspect.isawaitable(output):
                output = await output
        except Exception as exc:
            await self.report(decision, error=exc)
            raise
        await self.report(decision, result=output)
        return output

    async def decide(
        self,
        name: str,
        args: Mapping[str, Any] | None,
        *,
        call_id: str | None = None,
        wait: bool = True,
    ) -> ToolDecision:
        """See :meth:`Run.decide`."""
        self.check_open()
        arguments = dict(args or {})
        key = call_key(self.id, call_id)
        answer = await self._send(self.tool_call_request(name, arguments, key))
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
            answer = await self._wait_for_approval(answer, name, tool_call_id)
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

    async def report(
        self,
        decision: ToolDecision,
        *,
        result: Any = None,
        error: BaseException | str | None = None,
        latency_ms: int | None = None,
    ) -> None:
        """See :meth:`Run.report`."""
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
        answer = await self._send(request)
        self._check(self.report_answer, answer, decision.tool)
        if problem is not None:
            raise TypeError(f"{decision.tool} returned output that is not JSON: {problem}")

    async def _wait_for_approval(
        self, answer: dict[str, Any], tool: str, tool_call_id: int
    ) -> dict[str, Any]:
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
            answer = await self._send(request)
            decision, tool_call_id = self._check(
                self.tool_answer, answer, tool, expected_id=tool_call_id
            )
        return answer

    # --- the end ------------------------------------------------------------------------------

    async def finish(self, answer: str | None = None) -> dict[str, Any]:
        """See :meth:`Run.finish`."""
        return await self._finish({"status": "succeeded", "answer": answer or ""})

    async def fail(self, error: str) -> dict[str, Any]:
        """See :meth:`Run.fail`."""
        return await self._finish({"status": "failed", "error": error[:10_000]})

    async def _finish(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.ended or (self.stopped is not None and body["status"] == "succeeded"):
            self.check_open()
        answer = await self._send(self.finish_request(body))
        return self._check(self.finish_answer, answer)
