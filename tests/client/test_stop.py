"""A stop that cannot be swallowed: ``Stop`` is not an ``Exception`` (agent frameworks catch those
around tool bodies), and the run context raises the run's Stop on exit whatever the body did
with it, so the caller of the agent always learns that the run was stopped, and why."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from opsconsole_client import PROTOCOL_ERROR, Interrupted, Stop
from tests.client.conftest import Impl
from tests.client.scripted import ScriptedGateway, run_json, started_run, tool_call_json


def deny_tool_calls(scripted: ScriptedGateway) -> None:
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        200,
        json=tool_call_json(
            decision="stop",
            tool="browser.open",
            stop_reason="tool_denied:browser.open",
            detail="not on the allowlist",
            run=run_json(status="stopped", stop_reason="tool_denied:browser.open"),
        ),
    )


def tolerant_tool_node(run, impl) -> str:
    """What error-tolerant frameworks do: any Exception from a tool becomes a message to the
    model, and the agent carries on to a confident answer."""
    try:
        run.tool("browser.open", {"url": "https://vendor.example"}, impl)
    except Exception as exc:  # noqa: BLE001 - the framework's own error handling
        return f"Error: {exc!r}. Please fix your mistakes."
    return "tool ran"


def test_stop_is_not_an_exception_so_error_tolerant_code_cannot_catch_it(scripted):
    deny_tool_calls(scripted)
    impl = Impl()
    run = started_run(scripted)

    assert not issubclass(Stop, Exception)
    with pytest.raises(Stop) as stopped:
        tolerant_tool_node(run, impl)

    assert stopped.value.reason == "tool_denied:browser.open"
    assert (stopped.value.run_id, impl.calls) == (7, [])


def test_a_swallowed_stop_is_raised_again_when_the_run_block_ends(scripted):
    deny_tool_calls(scripted)
    impl = Impl()

    with pytest.raises(Stop) as stopped, started_run(scripted) as run:
        with contextlib.suppress(BaseException):  # a framework that swallows everything
            run.tool("browser.open", {"url": "https://vendor.example"}, impl)
        run.answer = "All good, ticket handled."

    assert stopped.value.reason == "tool_denied:browser.open"
    assert run.stopped is stopped.value
    assert impl.calls == []
    assert scripted.sent("POST /api/v1/runs/7/finish") == []  # the gateway already stopped it


def test_once_stopped_every_later_call_raises_the_same_stop_without_asking(scripted):
    deny_tool_calls(scripted)
    run = started_run(scripted)
    with pytest.raises(Stop) as first:
        run.tool("browser.open", {}, Impl())
    asked = len(scripted.requests)

    with pytest.raises(Stop) as again:
        run.tool("search.read", {"q": "x"}, Impl())
    with pytest.raises(Stop):
        run.gate(model="m")

    assert again.value is first.value
    assert len(scripted.requests) == asked


def test_an_error_raised_after_a_swallowed_stop_leaves_the_block_as_the_stop(scripted):
    deny_tool_calls(scripted)

    with pytest.raises(Stop) as stopped, started_run(scripted) as run:
        try:
            run.tool("browser.open", {}, Impl())
        except BaseException as exc:  # noqa: BLE001
            raise RuntimeError("the tool failed") from exc

    assert stopped.value.reason == "tool_denied:browser.open"
    assert isinstance(stopped.value.__cause__, RuntimeError)


def test_an_error_in_a_run_the_gateway_had_stopped_leaves_as_that_stop(scripted):
    scripted.routes["POST /api/v1/runs/7/finish"] = lambda r: httpx.Response(
        409, json={"error": "run_ended", "detail": "ended", "stop_reason": "cancelled"}
    )

    with pytest.raises(Stop) as stopped, started_run(scripted):
        raise ValueError("the model returned garbage")

    assert stopped.value.reason == "cancelled"
    assert isinstance(stopped.value.__cause__, ValueError)


def test_a_swallowed_client_side_stop_is_raised_again_and_the_run_failed(scripted):
    scripted.routes["POST /api/v1/runs/7/tool-calls"] = lambda r: httpx.Response(
        200, json=tool_call_json(decision="maybe")
    )
    scripted.routes["POST /api/v1/runs/7/finish"] = lambda r: httpx.Response(
        200, json=run_json(status="failed", stop_reason="error")
    )

    with pytest.raises(Stop) as stopped, started_run(scripted) as run:
        tolerant_tool_node_result = None
        try:
            run.tool("search.read", {}, Impl())
        except BaseException:  # noqa: BLE001
            tolerant_tool_node_result = "carried on"

    assert tolerant_tool_node_result == "carried on"
    assert stopped.value.reason == PROTOCOL_ERROR
    (finish,) = scripted.sent("POST /api/v1/runs/7/finish")
    assert finish["status"] == "failed"
    assert finish["error"].startswith("stopped: protocol_error")


def test_keyboard_interrupt_passes_through_a_stopped_run(scripted):
    deny_tool_calls(scripted)

    with pytest.raises(KeyboardInterrupt), started_run(scripted) as run:
        with contextlib.suppress(BaseException):  # a framework that swallows everything
            run.tool("browser.open", {}, Impl())
        raise KeyboardInterrupt


def test_interrupted_is_not_an_exception_either():
    assert not issubclass(Interrupted, Exception)


async def test_a_swallowed_stop_is_raised_again_when_the_async_run_block_ends(scripted):
    deny_tool_calls(scripted)
    impl = Impl()

    with pytest.raises(Stop) as stopped:
        async with scripted.async_gateway().run("task") as run:
            with contextlib.suppress(BaseException):  # a framework that swallows everything
                await run.tool("browser.open", {"url": "https://vendor.example"}, impl)
            run.answer = "All done, nothing to see."

    assert stopped.value.reason == "tool_denied:browser.open"
    assert run.stopped is stopped.value
    assert impl.calls == []
    assert scripted.sent("POST /api/v1/runs/7/finish") == []
