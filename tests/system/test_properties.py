"""Property tests of the budget and approval state machines (Hypothesis, stateful).

Hypothesis drives the services directly with any interleaving of runs, steps, tool calls, results,
retries with idempotency keys, approval decisions, expiries, cancels, finishes, time passing and
kill-switch changes, and checks after every step that:

- no counter passes its budget;
- every ended run has exactly one stop reason from the vocabulary (and an active run none);
- an expired, rejected or cancelled approval is never followed by an allow for its tool call;
- a retry never spends twice (the counters equal the counted calls and steps).

Each example runs in a savepoint rolled back at its end, so examples never see each other.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agents import stop_reasons
from agents.gateway import services as gateway_services
from agents.gateway.api import _poll_tool_call
from agents.models import Decision, EventKind, Run, ToolCall, TraceEvent
from agents.policy import services as policy_services
from agents.policy.services import kill_switch_set
from agents.registry import services as registry_services
from agents.runs import services as runs_services
from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide, approval_expire
from opsconsole import roles
from opsconsole.errors import ServiceError

pytestmark = pytest.mark.django_db

# Repeats weight the draw: most calls are legitimate, some are denied.
TOOLS = ["kb.read", "kb.read", "email.send", "email.send", "ticket.update", "browser.open"]
WRITES = {"email.send", "ticket.update"}

# Hypothesis favours the first options and the smallest values: budgets start roomy enough for a
# run to live a few steps and still meet its limits.
budgets = st.fixed_dictionaries(
    {
        "max_steps": st.integers(3, 8),
        "max_tool_calls": st.integers(3, 8),
        "max_tokens": st.sampled_from([2000, 600, 300]),
        "max_usd": st.sampled_from([1.0, 0.5, 0.3]),
        "max_seconds": st.just(600),
    }
)
arguments = st.sampled_from(
    [
        {"q": "refunds"},
        {"q": "pricing"},
        {"q": "shipping"},
        {"q": "returns"},
        {"unexpected": 1},  # fails kb.read's argument schema
    ]
)
# Rules that end runs act on one draw in four, so runs live long enough to do things.
now_and_then = st.sampled_from([False, False, False, True])
# "fresh" is a key never used before (retried later by retry_tool_call); k1/k2 get reused.
idempotency_keys = st.sampled_from(["fresh", "k1", None, "k2"])


def policy_document(ceilings: dict[str, Any]) -> dict[str, Any]:
    return {
        "tools": {
            "allow": ["kb.read", "email.send", "ticket.update"],
            "definitions": {
                "kb.read": {
                    "effect": "read",
                    "cost_usd": 0.05,
                    "args_schema": {
                        "type": "object",
                        "properties": {"q": {"type": "string"}},
                        "additionalProperties": False,
                    },
                },
                "email.send": {
                    "effect": "write",
                    "approval": {"required": True, "reviewers": 1, "timeout_seconds": 600},
                },
                "ticket.update": {
                    "effect": "write",
                    "expensive": True,
                    "cost_usd": 0.1,
                    "approval": {"required": True, "reviewers": 2, "timeout_seconds": 600},
                },
            },
        },
        "budgets": ceilings,
        "loop": {"max_repeats": 2},
    }


class GatewayMachine(RuleBasedStateMachine):
    """Runs, calls and requests are picked from the machine's own lists (not bundles), so most
    actions land on live objects: an active run, a pending request."""

    def __init__(self) -> None:
        super().__init__()
        self._savepoint = transaction.atomic()
        self._savepoint.__enter__()
        self.agent = registry_services.agent_create(name="prop-bot", actor="system")
        group = Group.objects.get(name=roles.REVIEWER)
        self.reviewers = []
        for name in ("rita", "ravi", "rosa"):
            user = User.objects.create(username=f"prop-{name}")
            user.groups.add(group)
            self.reviewers.append(user)
        self.kill_mode = "off"
        self.started = 0
        self.fresh_keys = 0
        self.run_ids: list[int] = []
        self.call_ids: list[int] = []
        # (run id, key) -> (tool, args, tool call id) of the first answer to that key.
        self.call_keys: dict[tuple[int, str], tuple[str, dict[str, Any], int]] = {}
        # key -> (request body, run id) of the run first started with that key.
        self.run_keys: dict[str, tuple[dict[str, Any], int]] = {}

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._savepoint.__exit__(None, None, None)

    def _pick_run(self, data: st.DataObject) -> int:
        """An active run, or now and then any run (calls on ended runs must stay stopped)."""
        active = list(
            Run.objects.filter(pk__in=self.run_ids, status__in=["running", "waiting_approval"])
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        any_run = data.draw(now_and_then, label="any run")
        return data.draw(st.sampled_from(self.run_ids if any_run or not active else active))

    def _pending_call(self, data: st.DataObject) -> int:
        pending = list(
            ApprovalRequest.objects.filter(agent=self.agent, status=ApprovalStatus.PENDING)
            .order_by("pk")
            .values_list("tool_call_id", flat=True)
        )
        return data.draw(st.sampled_from(pending or self.call_ids))

    # --- setup ------------------------------------------------------------------------------

    @initialize(ceilings=budgets)
    def publish_policy(self, ceilings: dict[str, Any]) -> None:
        policy_services.policy_publish(
            document=policy_document(ceilings), author="system", reason="property test"
        )

    # --- runs -------------------------------------------------------------------------------

    # A few runs per example, so calls pile up on each until their budgets bite.
    @precondition(lambda self: self.started < 3)
    @rule(
        asked=st.one_of(st.none(), budgets),
        key=st.one_of(st.none(), st.sampled_from(["r1", "r2"])),
        task=st.sampled_from(["t1", "t2"]),
    )
    def start_run(self, asked: dict[str, Any] | None, key: str | None, task: str):
        body = {"task": task, "budgets": asked or {}}
        self.started += 1
        try:
            run, created = gateway_services.run_start(
                agent=self.agent, task=task, budgets=asked or {}, idempotency_key=key
            )
        except ServiceError as exc:
            if exc.code == "run_refused":
                assert self.kill_mode == "stop_all"
                assert exc.extra["stop_reason"] == stop_reasons.KILL_SWITCH
                return
            assert exc.code == "idempotency_key_reused"
            assert key is not None and self.run_keys[key][0] != body
            return
        if key is not None:
            if key in self.run_keys:
                # A retry: the same run back, nothing new created.
                assert not created
                assert run.pk == self.run_keys[key][1]
                return
            self.run_keys[key] = (body, run.pk)
        assert created
        self.run_ids.append(run.pk)

    @precondition(lambda self: self.run_ids)
    @rule(
        data=st.data(),
        tokens=st.integers(0, 300),
        usd=st.sampled_from([Decimal("0"), Decimal("0.01"), Decimal("0.2")]),
    )
    def step(self, data: st.DataObject, tokens: int, usd: Decimal) -> None:
        run_id = self._pick_run(data)
        before = Run.objects.get(pk=run_id)
        outcome = gateway_services.step_record(
            agent=self.agent, run_id=run_id, tokens_in=tokens, tokens_out=0, usd=usd
        )
        if not before.is_active:
            assert (outcome.decision, outcome.stop_reason) == (Decision.STOP, before.stop_reason)
        if self.kill_mode == "stop_all":
            assert outcome.decision == Decision.STOP

    @precondition(lambda self: self.run_ids)
    @rule(data=st.data(), tool=st.sampled_from(TOOLS), args=arguments, key=idempotency_keys)
    def tool_call(self, data: st.DataObject, tool: str, args: dict[str, Any], key: str | None):
        run_id = self._pick_run(data)
        if key == "fresh":
            self.fresh_keys += 1
            key = f"fresh-{self.fresh_keys}"
        before = Run.objects.get(pk=run_id)
        remembered = self.call_keys.get((run_id, key)) if key else None
        try:
            call = gateway_services.tool_call_decide(
                agent=self.agent, run_id=run_id, tool=tool, args=args, idempotency_key=key
            )
        except ServiceError as exc:
            assert exc.code == "idempotency_key_reused"
            assert remembered is not None and remembered[:2] != (tool, args)
            return
        after = Run.objects.get(pk=run_id)
        if remembered is not None and remembered[2] is not None:
            # A retry returns the original answer and spends nothing.
            assert call.pk == remembered[2]
            assert (after.tool_calls, after.usd) == (before.tool_calls, before.usd)
            return
        if not before.is_active:
            assert (call.decision, call.stop_reason) == (Decision.STOP, before.stop_reason)
            assert after.tool_calls == before.tool_calls
            return
        if self.kill_mode == "stop_all" or (self.kill_mode == "disable_writes" and tool in WRITES):
            assert (call.decision, call.stop_reason) == (Decision.STOP, stop_reasons.KILL_SWITCH)
        if tool == "browser.open":
            assert call.decision == Decision.STOP
        if key is not None:
            self.call_keys[(run_id, key)] = (tool, args, call.pk)
        self.call_ids.append(call.pk)

    @precondition(lambda self: self.run_ids)
    @rule(data=st.data(), calls=st.integers(1, 8), steps=st.integers(0, 4))
    def burst(self, data: st.DataObject, calls: int, steps: int) -> None:
        """A busy agent: several distinct reads and steps in a row on one run, so runs meet
        their budgets; the call that would pass max_tool_calls is the one stopped."""
        run_id = self._pick_run(data)
        for i in range(max(calls, steps)):
            if i < steps:
                gateway_services.step_record(agent=self.agent, run_id=run_id, tokens_in=10)
            if i < calls:
                before = Run.objects.get(pk=run_id)
                call = gateway_services.tool_call_decide(
                    agent=self.agent,
                    run_id=run_id,
                    tool="kb.read",
                    args={"q": f"burst-{run_id}-{before.tool_calls}-{i}"},
                )
                over = before.is_active and before.tool_calls + 1 > before.max_tool_calls
                # Earlier checks in the decision order win: stop_all, then max_seconds.
                first = self.kill_mode != "stop_all" and before.seconds <= before.max_seconds
                if over and first:
                    assert (call.decision, call.stop_reason) == (
                        Decision.STOP,
                        stop_reasons.MAX_TOOL_CALLS,
                    )
                if call.pk is not None:
                    self.call_ids.append(call.pk)

    @precondition(lambda self: self.call_keys)
    @rule(data=st.data())
    def retry_tool_call(self, data: st.DataObject) -> None:
        """The agent lost an answer and sends the same call with the same key again."""
        (run_id, key), (tool, args, call_id) = data.draw(
            st.sampled_from(sorted(self.call_keys.items(), key=repr))
        )
        before = Run.objects.get(pk=run_id)
        call = gateway_services.tool_call_decide(
            agent=self.agent, run_id=run_id, tool=tool, args=args, idempotency_key=key
        )
        after = Run.objects.get(pk=run_id)
        assert call.pk == call_id
        assert (after.tool_calls, after.usd) == (before.tool_calls, before.usd)

    @precondition(lambda self: self.run_keys)
    @rule(data=st.data())
    def retry_run_start(self, data: st.DataObject) -> None:
        key, (body, run_id) = data.draw(st.sampled_from(sorted(self.run_keys.items())))
        count = Run.objects.filter(agent=self.agent).count()
        run, created = gateway_services.run_start(
            agent=self.agent, task=body["task"], budgets=body["budgets"], idempotency_key=key
        )
        assert (run.pk, created) == (run_id, False)
        assert Run.objects.filter(agent=self.agent).count() == count

    @precondition(lambda self: self.call_ids)
    @rule(
        data=st.data(),
        ok=st.booleans(),
        usd=st.sampled_from([None, Decimal("0.05"), Decimal("0.3")]),
        repeat=st.booleans(),
    )
    def report_result(
        self, data: st.DataObject, ok: bool, usd: Decimal | None, repeat: bool
    ) -> None:
        call_id = data.draw(st.sampled_from(self.call_ids))
        call = ToolCall.objects.get(pk=call_id)
        report = {
            "agent": self.agent,
            "tool_call_id": call_id,
            "ok": ok,
            "output": {"text": "result"} if ok else None,
            "error": "" if ok else "upstream 503",
            "usd": usd,
        }
        try:
            gateway_services.tool_call_report(**report)
        except ServiceError as exc:
            assert exc.code in {"not_allowed", "result_already_reported"}
            if exc.code == "not_allowed":
                assert call.decision != Decision.ALLOW
            else:
                assert call.reported_at is not None
            return
        assert call.decision == Decision.ALLOW
        if repeat:
            # The agent retries the same report (a lost answer): nothing is spent again.
            before = Run.objects.get(pk=call.run_id)
            gateway_services.tool_call_report(**report)
            assert Run.objects.get(pk=call.run_id).usd == before.usd

    def _decide(self, call_id: int, reviewer: int, verdict: str) -> None:
        before = ApprovalRequest.objects.filter(tool_call_id=call_id).first()
        if before is None:
            return
        try:
            request = approval_decide(
                request_id=before.pk,
                reviewer=self.reviewers[reviewer],
                verdict=verdict,
                comment="no" if verdict == "reject" else "",
            )
        except ServiceError as exc:
            assert exc.code in {"already_decided", "same_reviewer", "expired"}
            if exc.code == "already_decided":
                assert before.status != ApprovalStatus.PENDING
            return
        assert before.status == ApprovalStatus.PENDING
        if verdict == "reject":
            assert request.status == ApprovalStatus.REJECTED
            assert ToolCall.objects.get(pk=call_id).decision == Decision.STOP

    @precondition(lambda self: self.call_ids)
    @rule(data=st.data(), reviewer=st.integers(0, 2))
    def approve(self, data: st.DataObject, reviewer: int) -> None:
        self._decide(self._pending_call(data), reviewer, "approve")

    @precondition(lambda self: self.call_ids)
    @rule(data=st.data(), reviewer=st.integers(0, 2))
    def reject(self, data: st.DataObject, reviewer: int) -> None:
        self._decide(self._pending_call(data), reviewer, "reject")

    @precondition(lambda self: self.call_ids)
    @rule(data=st.data(), sweep=st.booleans())
    def expire(self, data: st.DataObject, sweep: bool) -> None:
        """Time passes past the request's expiry; the sweep (or the agent's next poll) sees it."""
        call_id = self._pending_call(data)
        request_id = (
            ApprovalRequest.objects.filter(tool_call_id=call_id)
            .values_list("pk", flat=True)
            .first()
        )
        if request_id is None:
            return
        ApprovalRequest.objects.filter(pk=request_id).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
        if sweep:
            approval_expire(request_id=request_id)

    @precondition(lambda self: self.call_ids)
    @rule(data=st.data())
    def poll(self, data: st.DataObject) -> None:
        """What the waiting agent sees (the long-poll's check, which also expires due requests)."""
        call_id = self._pending_call(data)
        payload, pending = _poll_tool_call(self.agent, call_id)
        request = ApprovalRequest.objects.filter(tool_call_id=call_id).first()
        if request is not None and request.status in (
            ApprovalStatus.REJECTED,
            ApprovalStatus.EXPIRED,
            ApprovalStatus.CANCELLED,
        ):
            assert payload["decision"] == Decision.STOP
        assert pending == (payload["decision"] == Decision.PENDING_APPROVAL)

    @precondition(lambda self: self.run_ids)
    @rule(data=st.data(), act=now_and_then)
    def time_passes(self, data: st.DataObject, act: bool) -> None:
        if not act:
            return
        run_id = self._pick_run(data)
        Run.objects.filter(pk=run_id).update(started_at=F("started_at") - timedelta(seconds=700))

    @precondition(lambda self: self.run_ids)
    @rule(data=st.data(), act=now_and_then)
    def cancel(self, data: st.DataObject, act: bool) -> None:
        if not act:
            return
        run_id = self._pick_run(data)
        before = Run.objects.get(pk=run_id)
        try:
            run = gateway_services.run_cancel(
                run_id=run_id, actor="user:olivia", reason="property test"
            )
        except ServiceError as exc:
            assert exc.code == "run_ended" and not before.is_active
            return
        assert (run.status, run.stop_reason) == ("stopped", stop_reasons.CANCELLED)

    @precondition(lambda self: self.run_ids)
    @rule(data=st.data(), succeeded=st.booleans(), act=now_and_then)
    def finish(self, data: st.DataObject, succeeded: bool, act: bool) -> None:
        if not act:
            return
        run_id = self._pick_run(data)
        before = Run.objects.get(pk=run_id)
        # What would stop the run's next step stops it at its finish instead (issue 12): the
        # kill switch's stop_all first, then its active time past max_seconds.
        stopping = (
            stop_reasons.KILL_SWITCH
            if self.kill_mode == "stop_all"
            else stop_reasons.MAX_SECONDS
            if before.max_seconds is not None and before.seconds > before.max_seconds
            else None
        )
        try:
            run = gateway_services.run_finish(
                agent=self.agent, run_id=run_id, status="succeeded" if succeeded else "failed"
            )
        except ServiceError as exc:
            after = Run.objects.get(pk=run_id)
            if exc.code == "run_stopped":
                assert before.is_active and stopping is not None
                assert exc.extra["stop_reason"] == after.stop_reason == stopping
                assert after.status == "stopped"
                return
            assert exc.code == "run_ended" and not before.is_active
            assert after.stop_reason == before.stop_reason
            return
        assert stopping is None
        assert run.stop_reason == (stop_reasons.OK if succeeded else stop_reasons.ERROR)

    @rule(
        mode=st.sampled_from(["off", "disable_writes", "disable_expensive", "stop_all"]),
        act=now_and_then,
    )
    def kill_switch(self, mode: str, act: bool) -> None:
        if not act and mode != "off":
            return
        kill_switch_set(mode=mode, reason="" if mode == "off" else "property test", actor="system")
        self.kill_mode = mode
        if mode == "stop_all":
            # The background sweep stop_all queues (run eagerly here).
            gateway_services.runs_stop_all_for_kill_switch()

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def no_counter_passes_its_budget(self) -> None:
        for run in Run.objects.filter(agent=self.agent):
            for counter, budget in (
                ("steps", "max_steps"),
                ("tool_calls", "max_tool_calls"),
                ("tokens", "max_tokens"),
                ("usd", "max_usd"),
            ):
                limit = getattr(run, budget)
                assert limit is None or getattr(run, counter) <= limit, (run.pk, counter)

    @invariant()
    def every_ended_run_has_one_valid_stop_reason(self) -> None:
        for status, stop_reason in Run.objects.filter(agent=self.agent).values_list(
            "status", "stop_reason"
        ):
            if status in ("running", "waiting_approval"):
                assert stop_reason == ""
            else:
                assert stop_reasons.is_valid(stop_reason), stop_reason

    @invariant()
    def a_closed_approval_never_allows(self) -> None:
        closed = ApprovalRequest.objects.filter(
            agent=self.agent,
            status__in=[ApprovalStatus.REJECTED, ApprovalStatus.EXPIRED, ApprovalStatus.CANCELLED],
        )
        assert not closed.filter(tool_call__decision=Decision.ALLOW).exists()
        approved = ApprovalRequest.objects.filter(agent=self.agent, status=ApprovalStatus.APPROVED)
        assert not approved.exclude(tool_call__decision=Decision.ALLOW).exists()
        # A request still pending belongs to a run still waiting.
        assert (
            not ApprovalRequest.objects.filter(agent=self.agent, status=ApprovalStatus.PENDING)
            .exclude(run__status="waiting_approval")
            .exists()
        )

    @invariant()
    def a_retry_never_spends_twice(self) -> None:
        """The counters equal what was counted: a retried call or run added nothing."""
        runs = Run.objects.filter(agent=self.agent).annotate(
            counted_calls=Count("tool_call_set", filter=Q(tool_call_set__counted=True)),
            tool_cost=Sum("tool_call_set__cost_usd", filter=Q(tool_call_set__counted=True)),
        )
        steps = dict(
            TraceEvent.objects.filter(
                run__agent=self.agent, kind=EventKind.STEP, data__counted=True
            )
            .values_list("run_id")
            .annotate(n=Count("id"))
        )
        for run in runs:
            assert run.tool_calls == run.counted_calls, run.pk
            assert run.steps == steps.get(run.pk, 0), run.pk
            assert run.usd >= (run.tool_cost or Decimal("0")), run.pk


def test_budgets_and_approvals_hold_under_any_interleaving(db):
    run_state_machine_as_test(
        GatewayMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=35,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )


def _reject_still_allows(monkeypatch) -> None:
    from approvals import services as approval_services

    close = approval_services._close

    def mutated(run, request, status, *, reason):
        close(run, request, status, reason=reason)
        ToolCall.objects.filter(pk=request.tool_call_id).update(decision=Decision.ALLOW)

    monkeypatch.setattr(approval_services, "_close", mutated)


def _budget_off_by_one(monkeypatch) -> None:
    lock = runs_services.run_lock_for_agent

    def mutated(*, agent, run_id):
        run = lock(agent=agent, run_id=run_id)
        run.max_tool_calls = (run.max_tool_calls or 0) + 1
        return run

    monkeypatch.setattr(gateway_services, "run_lock_for_agent", mutated)


def _retry_spends_again(monkeypatch) -> None:
    original = gateway_services._idempotent_tool_call

    def mutated(existing, tool, args_hash):
        Run.objects.filter(pk=existing.run_id).update(tool_calls=F("tool_calls") + 1)
        return original(existing, tool, args_hash)

    monkeypatch.setattr(gateway_services, "_idempotent_tool_call", mutated)


@pytest.mark.parametrize(
    "inject",
    [_reject_still_allows, _budget_off_by_one, _retry_spends_again],
    ids=lambda f: f.__name__,
)
def test_the_machine_finds_an_injected_bug(db, monkeypatch, inject):
    """The property test can fail: each of these bugs is found (derandomized, no shrinking)."""
    inject(monkeypatch)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            GatewayMachine,
            settings=settings(
                max_examples=30,
                stateful_step_count=35,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                derandomize=True,
                phases=[Phase.generate],
            ),
        )
