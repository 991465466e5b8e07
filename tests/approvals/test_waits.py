"""Approval waits are woken by the change (approvals/waits.py), not by polling: a waiting agent's
long poll answers as soon as a reviewer decides, and a wake only ever follows a commit."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.test import AsyncClient

from approvals import waits
from approvals.models import ApprovalRequest
from approvals.services import approval_decide

WRITE_POLICY = """
tools:
  allow: ["email.send"]
  definitions:
    email.send: {effect: write}
writes: {require_approval: true}
"""


pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_safety_poll(monkeypatch):
    """A wait that is not woken lasts its whole timeout: these tests fail instead of passing by
    the safety poll."""
    monkeypatch.setattr(waits, "SAFETY_POLL_SECONDS", 60.0)
    monkeypatch.setattr(waits, "DEGRADED_POLL_SECONDS", 60.0)


async def waiting_on(tool_call_id: int) -> None:
    """Until a waiter on the tool call is registered (the wait has begun)."""
    while tool_call_id not in waits._State.waiters:
        await asyncio.sleep(0.01)


async def test_a_wait_ends_when_another_thread_wakes_it():
    waiter = asyncio.ensure_future(waits.approval_wait(910_001, timeout=60))
    await asyncio.wait_for(waiting_on(910_001), 30)

    def wake_from_a_request_thread() -> None:
        try:
            waits.approval_wake(910_001)
        finally:
            connection.close()

    threading.Thread(target=wake_from_a_request_thread).start()
    await asyncio.wait_for(waiter, 30)  # woken, not timed out (60 s)
    assert 910_001 not in waits._State.waiters
    await stop_listener()


async def test_a_wake_just_before_the_wait_ends_it_at_once_but_only_once():
    await sync_to_async(waits.approval_wake)(910_002)
    second_began = asyncio.Event()

    async def wait_twice() -> None:
        await waits.approval_wait(910_002, timeout=60)  # the wake came just before: at once
        second_began.set()
        await waits.approval_wait(910_002, timeout=60)  # that wake is spent: waits

    task = asyncio.ensure_future(wait_twice())
    await asyncio.wait_for(second_began.wait(), 30)
    await asyncio.wait_for(waiting_on(910_002), 30)
    assert not task.done()
    task.cancel()
    await stop_listener()


def test_a_wake_goes_out_on_commit_and_never_on_rollback():
    before = waits._State.wakes.get(910_003, (0, 0.0))[0]
    with pytest.raises(RuntimeError), transaction.atomic():
        waits.approval_wake(910_003)
        raise RuntimeError("rolled back")
    assert waits._State.wakes.get(910_003, (0, 0.0))[0] == before
    with transaction.atomic():
        waits.approval_wake(910_003)
        assert waits._State.wakes.get(910_003, (0, 0.0))[0] == before
    assert waits._State.wakes[910_003][0] == before + 1


async def test_the_long_poll_answers_as_soon_as_the_reviewer_approves(
    agent, reviewer, publish_policy
):
    await sync_to_async(publish_policy)(WRITE_POLICY)
    run = (await sync_to_async(agent.api.post_json)("/api/v1/runs", {"task": "write"})).json()
    pending = (
        await sync_to_async(agent.api.post_json)(
            f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": {"to": "x"}}
        )
    ).json()
    assert pending["decision"] == "pending_approval"
    poll = asyncio.ensure_future(
        AsyncClient().get(
            f"/api/v1/tool-calls/{pending['id']}?wait=30",
            headers={"Authorization": f"Bearer {agent.key}"},
        )
    )
    await asyncio.wait_for(waiting_on(pending["id"]), 30)
    request = await ApprovalRequest.objects.aget(pk=pending["approval"]["id"])
    await sync_to_async(approval_decide)(
        request_id=request.pk, reviewer=reviewer.user, verdict="approve"
    )
    answer = await asyncio.wait_for(poll, 30)
    assert answer.status_code == 200
    assert answer.json()["decision"] == "allow"  # not "pending_approval" after 30 s
    await sync_to_async(lambda: connection.close())()  # the request threads' connection
    await stop_listener()


async def stop_listener() -> None:
    """This loop's listener (and its LISTEN connection) ends with the test."""
    task = waits._State.listeners.pop(asyncio.get_running_loop(), None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_on_postgresql_a_wake_reaches_other_processes_at_commit():
    """Other processes listen on PostgreSQL's NOTIFY channel; elsewhere only this process is
    woken directly (the channel layer carries it when it crosses processes)."""
    if connection.vendor != "postgresql":
        assert not waits._on_postgresql()
        return
    import psycopg

    from agents.gateway.core import _conninfo

    params = {**_conninfo(), "autocommit": True}
    with psycopg.connect(**params) as listener:
        listener.execute(f"LISTEN {waits.CHANNEL}")
        with transaction.atomic():
            waits.approval_wake(910_004)
            assert list(listener.notifies(timeout=0.2)) == []  # not before the commit
        notices = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.payload for n in notices] == ["910004"]
