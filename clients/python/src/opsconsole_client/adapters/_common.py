"""What the adapters share: one coroutine per gateway call for either kind of run, and JSON."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TypeAlias

from opsconsole_client import AsyncRun, Run, StepTicket, ToolDecision

AnyRun: TypeAlias = Run | AsyncRun


async def decide(
    run: AnyRun,
    name: str,
    args: Mapping[str, Any],
    *,
    call_id: str | None,
    wait: bool = True,
) -> ToolDecision:
    """``run.decide``; a sync run waits (for an approval too) in a worker thread, not the loop."""
    if isinstance(run, AsyncRun):
        return await run.decide(name, args, call_id=call_id, wait=wait)
    return await asyncio.to_thread(run.decide, name, args, call_id=call_id, wait=wait)


async def report(
    run: AnyRun, decision: ToolDecision, *, result: Any = None, error: BaseException | str | None
) -> None:
    if isinstance(run, AsyncRun):
        await run.report(decision, result=jsonable(result), error=error)
    else:
        await asyncio.to_thread(run.report, decision, result=jsonable(result), error=error)


async def gate(run: AnyRun, *, model: str | None) -> StepTicket:
    if isinstance(run, AsyncRun):
        return await run.gate(model=model)
    return await asyncio.to_thread(run.gate, model=model)


async def usage(run: AnyRun, ticket: StepTicket, *, tokens_in: int, tokens_out: int) -> None:
    if isinstance(run, AsyncRun):
        await run.usage(ticket, tokens_in=tokens_in, tokens_out=tokens_out)
    else:
        await asyncio.to_thread(run.usage, ticket, tokens_in=tokens_in, tokens_out=tokens_out)


def jsonable(value: Any) -> Any:
    """A tool's output as JSON for the gateway: as it is when it is JSON, a pydantic model's
    JSON form, else its text (a framework's message object, an image, ...)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        dump = getattr(value, "model_dump", None)
        if callable(dump):
            try:
                dumped = dump(mode="json")
                json.dumps(dumped, allow_nan=False)
                return dumped
            except (TypeError, ValueError):
                pass
        return str(value)
    return value


def parsed_args(arguments: str) -> dict[str, Any]:
    """A model's JSON arguments as the gateway's ``args``. Arguments that are not a JSON object
    are still shown to the gateway (under ``_raw``), so its argument schema decides about them."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}
