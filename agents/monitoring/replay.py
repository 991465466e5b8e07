"""Replay a recorded run against a policy without calling any tool; golden runs; dry runs.

A replay walks the run's trace in order and re-decides every step, tool call and reported
result with the gateway's own checks (``agents.gateway.decisions``), against the given policy. The
recorded tool outputs stand in for the tools. What the policy does not decide is taken as
recorded (the environment):

- the kill switch and the agent's enabled flag: a call or step the gateway stopped with
  ``kill_switch`` or ``agent_disabled`` is stopped the same way, any other sees them off;
- a tool's circuit breaker: open only where the recording says ``tool_degraded:<tool>``;
- time: each call is decided at its recorded active time: its offset from the run's start less
  the time the run had spent waiting for reviewers by then (from an approval request until none
  was pending), which max_seconds does not count; a finish is checked as the gateway does;
- reviewers: a call that needs approval gets the recorded verdict; if it did not need
  approval when recorded, approval is assumed granted (and the call says so);
- a stop from outside the agent's calls (cancelled, the reaper, stop_all) stops the replay
  where it happened, unless the replay had already stopped;
- a run the new policy lets go further than the recording ends with no stop reason (None):
  what the agent would have done next is unknown;
- a run recorded in observe mode (every call allowed) is compared with what enforcing would have
  done then (its would-have decisions and first would-have stop), and its would-have kill switch
  and disabled agent stand for the environment as recorded stops do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Prefetch

from agents import stop_reasons
from agents.gateway.budgets import effective_budgets
from agents.gateway.decisions import (
    finish_verdict,
    output_errors,
    result_stop_reason,
    step_verdict,
    tool_call_verdict,
)
from agents.models import (
    Decision,
    EventKind,
    GoldenRun,
    KillSwitchMode,
    Run,
    RunStatus,
    ToolCall,
    TraceEvent,
)
from agents.policy.document import BUDGET_NAMES, Policy, PolicyError, canonical_hash, normalise
from agents.policy.selectors import policy_current
from opsconsole.audit import audit_record
from opsconsole.errors import Conflict, Invalid, NotFound

ENDED_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED)
CONTINUE = "continue"

# --- recordings -------------------------------------------------------------------------------


def recording_of(run: Run) -> dict[str, Any]:
    """What a replay needs of a run, as JSON (golden runs keep it; trace retention cannot
    take it away). Uses ``run.events`` / ``run.tool_call_set`` prefetches when present."""
    events = sorted(run.events.all(), key=lambda event: event.pk)
    calls = {call.pk: call for call in run.tool_call_set.all()}
    started = next((e for e in events if e.kind == EventKind.RUN_STARTED), None)
    if started is None:
        raise Invalid(f"Run {run.pk} has no trace left to replay.", code="no_trace")
    requested = started.data.get("requested", run.budgets())
    return {
        "run": run.pk,
        "agent": run.agent.name,
        "agent_version": run.agent_version,
        "policy_version": run.policy_version,
        "stop_reason": run.stop_reason,
        "mode": run.mode,
        "would_stop_reason": run.would_stop_reason,
        "requested": requested,
        "events": [_recorded_event(run, event, calls) for event in events],
    }


def _recorded_event(run: Run, event: TraceEvent, calls: dict[int, ToolCall]) -> dict[str, Any]:
    data = event.data
    kept: dict[str, Any] = {
        "kind": event.kind,
        "offset": (event.at - run.started_at).total_seconds(),
    }
    if event.kind == EventKind.STEP:
        kept.update(
            tokens=int(data.get("tokens_in", 0)) + int(data.get("tokens_out", 0)),
            usd=str(data.get("usd", "0")),
            counted=bool(data.get("counted", True)),
            would_stop_reason=data.get("would_stop_reason") or "",
        )
    elif event.kind == EventKind.TOOL_CALL:
        call = calls.get(event.tool_call_id or 0)
        kept.update(
            tool_call=event.tool_call_id,
            tool=data.get("tool"),
            args=data.get("args", {}),
            decision=data.get("decision"),
            stop_reason=data.get("stop_reason") or "",
            # What became of the call in the end (approval verdicts, a cancelled run).
            final_stop_reason=(call.stop_reason if call else data.get("stop_reason")) or "",
            would_decision=data.get("would_decision") or "",
            would_stop_reason=data.get("would_stop_reason") or "",
        )
    elif event.kind == EventKind.TOOL_RESULT:
        kept.update(
            tool_call=event.tool_call_id,
            tool=data.get("tool"),
            ok=bool(data.get("ok")),
            valid=bool(data.get("valid", True)),
            errors=list(data.get("errors") or []),
            output=data.get("output"),
            usd=str(data.get("usd") or "0"),
        )
    elif event.kind == EventKind.APPROVAL_REQUESTED:
        kept.update(tool_call=event.tool_call_id, approval=data.get("approval_id"))
    elif event.kind == EventKind.APPROVAL_DECIDED:
        kept.update(approval=data.get("approval_id"), status=data.get("status"))
    elif event.kind in (EventKind.STOP, EventKind.FINISH):
        kept.update(stop_reason=data.get("stop_reason") or "")
    return kept


# --- the replay -------------------------------------------------------------------------------


@dataclass
class ReplayedDecision:
    """One step or tool call, as recorded and as replayed, side by side."""

    kind: str  # "step" or "tool_call"
    index: int  # 1-based, per kind
    tool: str = ""
    args: Any = None
    tool_call_id: int | None = None
    old_decision: str = ""
    new_decision: str = ""
    old_stop_reason: str = ""
    new_stop_reason: str = ""
    old_valid: bool | None = None
    new_valid: bool | None = None
    note: str = ""
    # Decided after the replay had stopped the run (it is a stop with that reason).
    after_stop: bool = False

    @property
    def validity_changed(self) -> bool:
        """A result the replay re-validated and judged otherwise (a refused call has none)."""
        return self.new_valid is not None and self.new_valid != self.old_valid

    @property
    def changed(self) -> bool:
        return self.validity_changed or (self.old_decision, self.old_stop_reason) != (
            self.new_decision,
            self.new_stop_reason,
        )


@dataclass
class ReplayResult:
    run_id: int
    agent: str
    agent_version: str
    policy_version: int | None
    old_stop_reason: str
    new_stop_reason: str | None
    decisions: list[ReplayedDecision] = field(default_factory=list)
    # Recorded in observe mode: ``old_*`` are what enforcing would have done then.
    observed: bool = False

    @property
    def tool_calls(self) -> list[ReplayedDecision]:
        return [d for d in self.decisions if d.kind == "tool_call"]

    @property
    def changed_decisions(self) -> list[ReplayedDecision]:
        # An observed run went on past its would-have stop; enforced, nothing follows it.
        return [d for d in self.decisions if d.changed and not (self.observed and d.after_stop)]

    @property
    def changed(self) -> bool:
        return self.old_stop_reason != self.new_stop_reason or bool(self.changed_decisions)

    @property
    def newly_stopped(self) -> bool:
        """The policy would have stopped this run where (or why) it did not stop before."""
        return (
            self.new_stop_reason not in (None, stop_reasons.OK, stop_reasons.ERROR)
            and self.new_stop_reason != self.old_stop_reason
        )

    def differences(self) -> list[str]:
        lines = [
            f"{d.kind} {d.index}{' ' + d.tool if d.tool else ''}: "
            f"{d.old_decision} {d.old_stop_reason or ''} -> {d.new_decision} {d.new_stop_reason or ''}"
            f"{f' (output valid {d.old_valid} -> {d.new_valid})' if d.validity_changed else ''}"
            for d in self.changed_decisions
        ]
        if self.old_stop_reason != self.new_stop_reason:
            new = self.new_stop_reason or "(would go on past the recording)"
            lines.append(f"stop reason: {self.old_stop_reason} -> {new}")
        return [" ".join(line.split()) for line in lines]


@dataclass
class _Counters:
    """A run's budgets and usage during a replay (satisfies ``decisions.RunCounters``)."""

    max_steps: int | None
    max_seconds: int | None
    max_tool_calls: int | None
    max_usd: Decimal | None
    max_tokens: int | None
    steps: int = 0
    tool_calls: int = 0
    tokens: int = 0
    usd: Decimal = Decimal("0")
    seconds: float = 0.0


def _consequences(events: list[dict[str, Any]]) -> set[int]:
    """Indexes of STOP events caused by the event just before them (a refused step or call,
    a result or verdict that ended the run): the replay makes those decisions itself."""
    caused = set()
    for index, event in enumerate(events[:-1]):
        after = events[index + 1]
        if after["kind"] != EventKind.STOP:
            continue
        kind = event["kind"]
        reason = after["stop_reason"]
        if (
            (kind == EventKind.STEP and not event["counted"])
            or (kind == EventKind.TOOL_CALL and event["decision"] == Decision.STOP)
            or (
                kind == EventKind.TOOL_RESULT
                and (
                    reason == stop_reasons.MAX_USD
                    or reason
                    == stop_reasons.for_tool(stop_reasons.INVALID_TOOL_OUTPUT, event["tool"])
                )
            )
            or (kind == EventKind.APPROVAL_DECIDED and event["status"] in ("rejected", "expired"))
        ):
            caused.add(index + 1)
    return caused


def _active_offsets(events: list[dict[str, Any]]) -> list[float]:
    """Each event's active time: its offset less the recorded waits for reviewers so far (the
    run waits from an approval request until no request of it is pending, as the gateway
    counts it)."""
    pending: set[Any] = set()
    waited = 0.0
    since: float | None = None
    active = []
    for event in events:
        offset = event["offset"]
        if event["kind"] == EventKind.APPROVAL_REQUESTED:
            if not pending:
                since = offset
            pending.add(event["approval"])
        elif event["kind"] == EventKind.APPROVAL_DECIDED and event["approval"] in pending:
            pending.discard(event["approval"])
            if not pending and since is not None:
                waited += offset - since
                since = None
        waiting = waited + (offset - since if since is not None else 0.0)
        active.append(max(0.0, offset - waiting))
    return active


def replay(recording: dict[str, Any], policy: Policy) -> ReplayResult:
    """Re-decide a recording against ``policy`` (see the module docstring). Calls no tool."""
    agent = recording["agent"]
    budgets = effective_budgets(recording.get("requested") or {}, policy.ceilings(agent))
    counters = _Counters(**{name: budgets[name] for name in BUDGET_NAMES})
    observed = recording.get("mode") == "observe"
    result = ReplayResult(
        run_id=recording["run"],
        agent=agent,
        agent_version=recording.get("agent_version", ""),
        policy_version=policy.version,
        old_stop_reason=(observed and recording.get("would_stop_reason"))
        or recording["stop_reason"],
        new_stop_reason=None,
        observed=observed,
    )
    events = recording["events"]
    caused = _consequences(events)
    active_offsets = _active_offsets(events)
    counted: list[tuple[str, str]] = []  # (tool, args hash) of calls the replay counted
    by_call: dict[int, ReplayedDecision] = {}
    approvals: dict[int, int] = {}  # approval id -> tool call id
    requested_approval: set[int] = set()  # calls the recording asked reviewers about
    waiting: set[int] = set()  # calls the replay holds for a reviewer's verdict
    stopped: str | None = None

    def stop(reason: str) -> None:
        nonlocal stopped
        stopped = reason
        # A run that stops no longer needs its pending writes decided (as the gateway does).
        for call_id in waiting:
            by_call[call_id].new_stop_reason = reason
        waiting.clear()

    steps = calls = 0
    for index, event in enumerate(events):
        kind = event["kind"]
        following = events[index + 1] if index + 1 in caused else None
        recorded_stop = following["stop_reason"] if following else ""
        counters.seconds = active_offsets[index]

        if kind == EventKind.STOP:
            if index not in caused and stopped is None:
                stop(event["stop_reason"])
        elif kind == EventKind.FINISH:
            if stopped is None:
                # The environment (the kill switch, the agent's flag) as recorded: a finish the
                # gateway let through saw them off; only the policy's max_seconds is re-decided.
                late = finish_verdict(
                    run=counters, agent_enabled=True, kill_mode=KillSwitchMode.OFF
                )
                stop(late or event["stop_reason"])
        elif kind == EventKind.STEP:
            steps += 1
            recorded_stop = recorded_stop or event.get("would_stop_reason", "")
            entry = ReplayedDecision(
                kind="step",
                index=steps,
                old_decision=Decision.STOP if recorded_stop else CONTINUE,
                old_stop_reason=recorded_stop,
                after_stop=stopped is not None,
            )
            if stopped is not None:
                entry.new_decision, entry.new_stop_reason = Decision.STOP, stopped
            else:
                tokens, usd = event["tokens"], Decimal(event["usd"])
                reason = step_verdict(
                    run=counters,
                    agent_enabled=recorded_stop != stop_reasons.AGENT_DISABLED,
                    kill_mode=_kill_mode(recorded_stop),
                    tokens=tokens,
                    usd=usd,
                )
                if reason is not None:
                    entry.new_decision, entry.new_stop_reason = Decision.STOP, reason
                    stop(reason)
                else:
                    entry.new_decision = CONTINUE
                    counters.steps += 1
                    counters.tokens += tokens
                    counters.usd += usd
            result.decisions.append(entry)
        elif kind == EventKind.TOOL_CALL:
            calls += 1
            tool, args = event["tool"], event["args"]
            entry = ReplayedDecision(
                kind="tool_call",
                index=calls,
                tool=tool,
                args=args,
                tool_call_id=event["tool_call"],
                old_decision=event.get("would_decision") or event["decision"],
                old_stop_reason=event["final_stop_reason"] or event.get("would_stop_reason", ""),
                after_stop=stopped is not None,
            )
            by_call[event["tool_call"]] = entry
            if stopped is not None:
                entry.new_decision, entry.new_stop_reason = Decision.STOP, stopped
            else:
                args_hash = canonical_hash(args)
                recorded = event["stop_reason"] or event.get("would_stop_reason", "")
                breaker_open = recorded == stop_reasons.for_tool(stop_reasons.TOOL_DEGRADED, tool)
                verdict = tool_call_verdict(
                    policy=policy,
                    tool=tool,
                    args=args,
                    agent_name=agent,
                    agent_enabled=recorded != stop_reasons.AGENT_DISABLED,
                    kill_mode=_kill_mode(recorded),
                    run=counters,
                    repeats=lambda key=(tool, args_hash): counted.count(key),
                    calls_of_tool=lambda tool=tool: sum(1 for name, _ in counted if name == tool),
                    degraded=lambda _rule, hit=breaker_open: hit,
                )
                entry.new_decision = verdict.decision
                if verdict.stop_reason is not None:
                    entry.new_stop_reason = verdict.stop_reason
                    stop(verdict.stop_reason)
                else:
                    counted.append((tool, args_hash))
                    counters.tool_calls += 1
                    counters.usd += verdict.rule.cost_usd
                    if verdict.decision == Decision.PENDING_APPROVAL:
                        waiting.add(event["tool_call"])
            result.decisions.append(entry)
        elif kind == EventKind.APPROVAL_REQUESTED:
            approvals[event["approval"]] = event["tool_call"]
            requested_approval.add(event["tool_call"])
        elif kind == EventKind.APPROVAL_DECIDED:
            call_id = approvals.get(event["approval"], -1)
            if call_id not in waiting:
                continue  # the replay did not ask for this approval, or had stopped
            waiting.discard(call_id)
            entry = by_call[call_id]
            if event["status"] in ("rejected", "expired"):
                kind_of = (
                    stop_reasons.APPROVAL_REJECTED
                    if event["status"] == "rejected"
                    else stop_reasons.APPROVAL_TIMEOUT
                )
                entry.new_stop_reason = stop_reasons.for_tool(kind_of, entry.tool)
                stop(entry.new_stop_reason)
        elif kind == EventKind.TOOL_RESULT:
            entry = by_call.get(event["tool_call"])
            if entry is None:
                continue
            entry.old_valid = event["valid"]
            if stopped is not None or entry.new_decision == Decision.STOP:
                continue
            if event["tool_call"] in waiting:
                # The recording had no reviewer for this call: assume one approved it.
                waiting.discard(event["tool_call"])
                entry.note = "approval assumed"
            if not event["ok"]:
                errors: list[str] = []
            elif event["valid"]:
                errors = output_errors(policy.tool_rule(entry.tool), event["output"])
            else:
                errors = event["errors"] or ["output was invalid when recorded"]
            entry.new_valid = not errors
            spend = Decimal(event["usd"])
            reason = result_stop_reason(run=counters, tool=entry.tool, spend=spend, errors=errors)
            if reason is not None:
                stop(reason)
            else:
                counters.usd += spend
    for call_id in waiting:
        if call_id not in requested_approval:
            by_call[call_id].note = "approval assumed"
    result.new_stop_reason = stopped
    return result


def _kill_mode(recorded_stop_reason: str) -> str:
    """The kill switch as the recording saw it: on where it stopped the call, else off."""
    if recorded_stop_reason == stop_reasons.KILL_SWITCH:
        return KillSwitchMode.STOP_ALL
    return KillSwitchMode.OFF


# --- services and selectors -------------------------------------------------------------------


def draft_policy(document: dict[str, Any]) -> Policy:
    """A policy document that is not published (version None). Raises Invalid."""

    try:
        return Policy(None, normalise(document))  # type: ignore[arg-type]
    except PolicyError as exc:
        raise Invalid(exc.errors, code="invalid_policy") from None


def _with_trace(runs):
    return runs.select_related("agent").prefetch_related(
        Prefetch("events", queryset=TraceEvent.objects.order_by("id")), "tool_call_set"
    )


def replay_run(run: Run, policy: Policy | None = None) -> ReplayResult:
    """Replay one recorded run against ``policy`` (default: the policy in force)."""

    run = _with_trace(Run.objects.filter(pk=run.pk)).get()
    return replay(recording_of(run), policy or policy_current())


@dataclass
class DryRun:
    """What a policy would have done to recent runs: the policy editor's "before you save"."""

    replayed: int
    skipped: int
    changed: list[ReplayResult]
    # Runs recorded in observe mode, every one replayed (changed or not).
    observed: list[ReplayResult] = field(default_factory=list)

    @property
    def stopped(self) -> list[ReplayResult]:
        return [result for result in self.changed if result.newly_stopped]

    @property
    def observed_stopped(self) -> list[ReplayResult]:
        """Observed runs this policy, enforced, would have stopped: what switching the agents
        to enforce would do to traffic like theirs."""
        return [
            result
            for result in self.observed
            if result.new_stop_reason not in (None, stop_reasons.OK, stop_reasons.ERROR)
        ]


def policy_dry_run(document: dict[str, Any], limit: int = 1000) -> DryRun:
    """Replay the last ``limit`` ended runs against a draft policy document.

    "This change would have stopped ``len(dry_run.stopped)`` of the last ``dry_run.replayed``
    runs": ``dry_run.stopped`` are those runs (their ``differences()`` say where and why).
    Raises Invalid when the document is not a valid policy. Three queries in all.
    """
    policy = draft_policy(document)
    runs = _with_trace(Run.objects.filter(status__in=ENDED_STATUSES).order_by("-started_at", "-id"))
    replayed = skipped = 0
    changed, observed = [], []
    for run in runs[:limit]:
        try:
            result = replay(recording_of(run), policy)
        except Invalid:
            skipped += 1  # its trace was purged
            continue
        replayed += 1
        if result.changed:
            changed.append(result)
        if result.observed:
            observed.append(result)
    return DryRun(replayed=replayed, skipped=skipped, changed=changed, observed=observed)


def golden_mark(*, run_id: int, actor: str, note: str = "") -> GoldenRun:
    """Keep a finished run as golden (with a copy of its recording); repeating changes nothing."""
    with transaction.atomic():
        runs = _with_trace(Run.objects.select_for_update(of=("self",)).filter(pk=run_id))
        run = runs.first()
        if run is None:
            raise NotFound(f"No run {run_id}.")
        existing = GoldenRun.objects.filter(run=run).first()
        if existing is not None:
            return existing
        if run.is_active:
            raise Conflict("Only a finished run can be golden.", code="run_active")
        golden = GoldenRun.objects.create(
            run=run, note=note, recording=recording_of(run), marked_by=actor
        )
        audit_record(
            actor=actor,
            action="run.golden_mark",
            target_type="run",
            target_id=run.pk,
            reason=note,
            after={"golden": True, "stop_reason": run.stop_reason},
        )
    return golden


def golden_unmark(*, run_id: int, actor: str) -> bool:
    with transaction.atomic():
        deleted, _ = GoldenRun.objects.filter(run_id=run_id).delete()
        if deleted:
            audit_record(
                actor=actor,
                action="run.golden_unmark",
                target_type="run",
                target_id=run_id,
                before={"golden": True},
                after={"golden": False},
            )
    return bool(deleted)


def golden_list() -> list[GoldenRun]:
    return list(GoldenRun.objects.select_related("run", "run__agent").order_by("-marked_at", "-id"))


def golden_replay(
    goldens: Iterable[GoldenRun], policy: Policy
) -> list[tuple[GoldenRun, ReplayResult]]:
    """Replay golden runs from their kept recordings against ``policy``."""
    return [(golden, replay(golden.recording, policy)) for golden in goldens]
