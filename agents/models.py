"""Agents and their keys, versioned policy, runs, tool calls, trace events and breakers."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils import timezone


class Agent(models.Model):
    """A named program that calls the gateway. Its allowlist and ceilings live in the policy."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    # Lets an authenticated agent stand as DRF's request.user.
    is_authenticated = True

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AgentKey(models.Model):
    """An agent's API key: only a SHA-256 of it is stored; it is shown once at creation."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="keys")
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.agent})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class PolicyVersion(models.Model):
    """One numbered version of the whole policy; the highest number is in force."""

    number = models.PositiveIntegerField(unique=True)
    document = models.JSONField(help_text="The normalised policy (see agents/policy.py)")
    author = models.CharField(max_length=150, help_text="user:<name> or system")
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    restored_from = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"policy v{self.number}"


class RunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"


ACTIVE_STATUSES = (RunStatus.RUNNING, RunStatus.WAITING_APPROVAL)


class Run(models.Model):
    """One task attempt by an agent, with its effective budgets and live usage counters.

    Usage counters change only in ``agents.services`` with the row locked.
    """

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs")
    agent_version = models.CharField(max_length=100, blank=True)
    task = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    # NULL, not "", so the partial unique constraint ignores calls without a key.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    request_hash = models.CharField(max_length=64, blank=True)
    policy_version = models.PositiveIntegerField()

    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.RUNNING)
    stop_reason = models.CharField(max_length=200, blank=True)
    answer = models.TextField(blank=True)
    error = models.TextField(blank=True)

    # Effective budgets; null means no limit.
    max_steps = models.PositiveIntegerField(null=True, blank=True)
    max_seconds = models.PositiveIntegerField(null=True, blank=True)
    max_tool_calls = models.PositiveIntegerField(null=True, blank=True)
    max_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    max_tokens = models.PositiveBigIntegerField(null=True, blank=True)

    steps = models.PositiveIntegerField(default=0)
    tool_calls = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    usd = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))

    started_at = models.DateTimeField(default=timezone.now)
    last_activity_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="run_idempotency_key_unique",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=RunStatus.values), name="run_status_valid"
            ),
            # Exactly one stop reason once ended, none while active.
            models.CheckConstraint(
                condition=(
                    models.Q(status__in=["running", "waiting_approval"], stop_reason="")
                    | (
                        models.Q(status__in=["succeeded", "failed", "stopped"])
                        & ~models.Q(stop_reason="")
                    )
                ),
                name="run_stop_reason_iff_ended",
            ),
        ]
        indexes = [
            models.Index(fields=["-started_at", "-id"], name="run_list_idx"),
            models.Index(fields=["agent", "-started_at", "-id"], name="run_agent_list_idx"),
            models.Index(fields=["status", "-started_at", "-id"], name="run_status_list_idx"),
            models.Index(fields=["stop_reason", "-started_at", "-id"], name="run_stop_list_idx"),
            models.Index(
                fields=["last_activity_at"],
                condition=models.Q(status__in=["running", "waiting_approval"]),
                name="run_active_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.agent_id})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def seconds(self) -> float:
        end = self.ended_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def budgets_dict(self) -> dict:
        return self.budgets()

    @property
    def usage_dict(self) -> dict:
        return self.usage()

    def budgets(self) -> dict:
        return {
            "max_steps": self.max_steps,
            "max_seconds": self.max_seconds,
            "max_tool_calls": self.max_tool_calls,
            "max_usd": float(self.max_usd) if self.max_usd is not None else None,
            "max_tokens": self.max_tokens,
        }

    def usage(self) -> dict:
        return {
            "steps": self.steps,
            "tool_calls": self.tool_calls,
            "tokens": self.tokens,
            "usd": float(self.usd),
            "seconds": round(self.seconds, 3),
        }


class Decision(models.TextChoices):
    ALLOW = "allow", "Allow"
    PENDING_APPROVAL = "pending_approval", "Pending approval"
    STOP = "stop", "Stop"


class ToolCall(models.Model):
    """A request to use a tool, decided before it happens; then its reported result."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tool_call_set")
    tool = models.CharField(max_length=200)
    args = models.JSONField(default=dict)
    args_hash = models.CharField(max_length=64)
    # NULL, not "", so the partial unique constraint ignores calls without a key.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    decision = models.CharField(max_length=20, choices=Decision.choices)
    stop_reason = models.CharField(max_length=200, blank=True)
    detail = models.TextField(blank=True)
    # Whether this call was counted against the budgets (stopped calls are not).
    counted = models.BooleanField(default=False)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    created_at = models.DateTimeField(default=timezone.now)

    result_ok = models.BooleanField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    result_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    valid = models.BooleanField(null=True, blank=True)
    validation_errors = models.JSONField(default=list, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="toolcall_idempotency_key_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["run", "tool", "args_hash"], name="toolcall_loop_idx"),
            models.Index(
                fields=["tool", "-reported_at"],
                condition=models.Q(reported_at__isnull=False),
                name="toolcall_breaker_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tool} ({self.decision})"


class EventKind(models.TextChoices):
    RUN_STARTED = "run_started", "Run started"
    STEP = "step", "Step"
    TOOL_CALL = "tool_call", "Tool call"
    TOOL_RESULT = "tool_result", "Tool result"
    APPROVAL_REQUESTED = "approval_requested", "Approval requested"
    APPROVAL_DECIDED = "approval_decided", "Approval decided"
    STOP = "stop", "Stopped"
    FINISH = "finish", "Finished"


class TraceEvent(models.Model):
    """One entry of a run's trace; the timeline is these rows in id order."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    at = models.DateTimeField(default=timezone.now)
    tool_call = models.ForeignKey(
        ToolCall, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    data = models.JSONField(default=dict)

    class Meta:
        indexes = [models.Index(fields=["run", "id"], name="trace_run_idx")]

    def __str__(self) -> str:
        return f"{self.kind} @ {self.at:%H:%M:%S}"


class BreakerState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open"


class ToolBreaker(models.Model):
    """A tool's circuit breaker (degrade mode); one row per tool that has reported results."""

    tool = models.CharField(max_length=200, unique=True)
    state = models.CharField(
        max_length=16, choices=BreakerState.choices, default=BreakerState.CLOSED
    )
    opened_at = models.DateTimeField(null=True, blank=True)
    trial_calls_left = models.PositiveIntegerField(default=0)
    failure_rate = models.FloatField(default=0.0)
    # Only results reported after this count towards the failure rate (set when it closes).
    window_start = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.tool}: {self.state}"
