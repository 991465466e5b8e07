"""Agents and their keys, versioned policy, runs, tool calls, trace events and breakers."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.db import models
from django.utils import timezone


class AgentMode(models.TextChoices):
    """How the gateway applies its decisions to an agent (the policy's ``agents.<name>.mode``)."""

    ENFORCE = "enforce", "Enforce"
    # Every decision is made and recorded as in enforce, but the answer is allow: nothing is
    # stopped and no approval is requested; the run shows what would have happened.
    OBSERVE = "observe", "Observe"


class Agent(models.Model):
    """A named program that calls the gateway. Its allowlist and ceilings live in the policy."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.TextField(blank=True)
    # A pause is a disabling by on-call or an admin to contain the agent for now (it shows on
    # every page until resumed); an admin's disable without a pause is the agent's lasting state.
    paused = models.BooleanField(default=False)
    disabled_by = models.CharField(max_length=150, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # The policy's ``agents.<name>.mode``, copied here by every policy publish (and agent
    # creation) in the same transaction: the gateway reads it with the agent's enabled state
    # (``agent_state_hold``), and a path that reads only the agent row (a fast path) sees it too.
    mode = models.CharField(max_length=8, choices=AgentMode.choices, default=AgentMode.ENFORCE)

    # Lets an authenticated agent stand as DRF's request.user.
    is_authenticated = True

    # Agents authenticate as themselves (opsconsole.authentication.is_agent), not as users.
    is_agent = True

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(paused=True, enabled=True), name="agent_paused_is_disabled"
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def disabled_detail(self) -> str:
        """Why the agent's calls stop, in the stop's detail: "paused by olivia: reason"."""
        if self.enabled:
            return ""
        verb = "paused" if self.paused else "disabled"
        who = f" by {self.disabled_by}" if self.disabled_by else ""
        return f"{verb}{who}: {self.disabled_reason or 'no reason given'}"


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


class RunSource(models.TextChoices):
    """Which front door recorded the run: the gateway decided it, or OTLP traces observed it."""

    GATEWAY = "gateway", "Gateway"
    # Built from OpenTelemetry spans (agents/telemetry): nothing was decided or enforced; the
    # policy's verdict is computed afterwards as "would have" (Run.would_stop_reason).
    OTLP = "otlp", "Observed (OTLP)"


# What the budget and usage columns hold on every database: PostgreSQL's integer, bigint and
# numeric(12, 6) (SQLite stores more, then fails to read a decimal back). The gateway treats them
# as ceilings under every budget, so no counter is ever asked to hold more.
INT_COLUMN_MAX = 2**31 - 1
BIGINT_COLUMN_MAX = 2**63 - 1
USD_COLUMN_MAX = Decimal("999999.999999")


class Run(models.Model):
    """One task attempt by an agent, with its effective budgets and live usage counters.

    Usage counters change only in ``agents.gateway.services`` with the row locked.
    """

    # No index of its own: run_agent_list_idx and run_agent_status_list_idx start with it, and
    # every index on this table costs the gateway a write on each decision.
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs", db_index=False)
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
    # Time spent waiting for people (approval requests), which max_seconds does not count:
    # the waits that ended, and when the open one began (set while the run is waiting_approval;
    # agents.runs.services.run_wait_begin / run_wait_end).
    waited_seconds = models.FloatField(default=0.0, db_default=0.0)
    waiting_since = models.DateTimeField(null=True, blank=True)

    # Observe mode: how the run's decisions were applied (observe: every one answered allow),
    # and what enforcing would have done. The first would-have stop is the run's headline
    # (later calls are still decided and recorded, on their ToolCall.would_*):
    # "would have stopped at call 16 with max_tool_calls".
    mode = models.CharField(max_length=8, choices=AgentMode.choices, default=AgentMode.ENFORCE)
    would_stop_reason = models.CharField(max_length=200, blank=True)
    would_stop_detail = models.TextField(blank=True)
    # Where it would have stopped: "call 16", "step 31", "start", "finish", "result of call 3".
    would_stop_at = models.CharField(max_length=40, blank=True)
    # Calls that would have waited for a reviewer, and the first one's tool.
    would_approvals = models.PositiveIntegerField(default=0)
    would_approval_tool = models.CharField(max_length=200, blank=True)

    # Observed runs (agents/telemetry): one per OTLP trace id of the agent; NULL for the gateway's.
    source = models.CharField(max_length=8, choices=RunSource.choices, default=RunSource.GATEWAY)
    trace_id = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001

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
            # One observed run per trace of an agent (agents/telemetry upserts on it).
            models.UniqueConstraint(
                fields=["agent", "trace_id"],
                condition=models.Q(trace_id__isnull=False),
                name="run_trace_id_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["-started_at", "-id"], name="run_list_idx"),
            models.Index(fields=["agent", "-started_at", "-id"], name="run_agent_list_idx"),
            models.Index(fields=["status", "-started_at", "-id"], name="run_status_list_idx"),
            models.Index(fields=["stop_reason", "-started_at", "-id"], name="run_stop_list_idx"),
            # No index on last_activity_at (run_active_idx, dropped in 0014): every decision
            # moves it, and an indexed column changing makes the run's update never HOT.
            # The runs list's "observed" filter; partial, so the gateway's inserts skip it.
            models.Index(
                fields=["-started_at", "-id"],
                condition=models.Q(source="otlp"),
                name="run_observed_list_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.agent_id})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_observed(self) -> bool:
        """Decided in observe mode: the gateway answered allow whatever it decided."""
        return self.mode == AgentMode.OBSERVE

    @property
    def would_headline(self) -> str:
        """What enforcing would have done to this observed run, in words ("" if nothing)."""
        if self.would_stop_reason:
            return f"would have stopped at {self.would_stop_at} with {self.would_stop_reason}"
        if self.would_approvals:
            more = f" (and {self.would_approvals - 1} more)" if self.would_approvals > 1 else ""
            return f"would have waited for approval on {self.would_approval_tool}{more}"
        return ""

    def _times(self) -> tuple[float, float]:
        """(elapsed, waiting) seconds, both at one instant: the end, or now while active."""
        end = self.ended_at or timezone.now()
        elapsed = max(0.0, (end - self.started_at).total_seconds())
        waiting = self.waited_seconds
        if self.waiting_since is not None:
            waiting += max(0.0, (end - self.waiting_since).total_seconds())
        return elapsed, min(waiting, elapsed)

    @property
    def elapsed_seconds(self) -> float:
        """Wall-clock time since the start (to the end once ended), waits included."""
        return self._times()[0]

    @property
    def seconds(self) -> float:
        """Active time, what max_seconds bounds: elapsed less the time spent waiting for people."""
        elapsed, waiting = self._times()
        return elapsed - waiting

    @property
    def waiting_seconds(self) -> float:
        """Time spent waiting for a human decision, the open wait included."""
        return self._times()[1]

    @property
    def active_clock_start(self) -> datetime:
        """Where a clock of active time starts: while the run is running, its active seconds
        are the time since this moment (its start, moved on by the waits that ended)."""
        return self.started_at + timedelta(seconds=self.waited_seconds)

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
        elapsed, waiting = self._times()
        return {
            "steps": self.steps,
            "tool_calls": self.tool_calls,
            "tokens": self.tokens,
            "usd": float(self.usd),
            "seconds": round(elapsed - waiting, 3),
            "waiting_seconds": round(waiting, 3),
        }


class Decision(models.TextChoices):
    ALLOW = "allow", "Allow"
    PENDING_APPROVAL = "pending_approval", "Pending approval"
    STOP = "stop", "Stop"
    # The policy's ``on_refusal: refuse_call``: this call is refused, the run goes on.
    REFUSED = "refused", "Refused"


class ToolCall(models.Model):
    """A request to use a tool, decided before it happens; then its reported result."""

    # No index of its own: toolcall_loop_idx starts with it (see Run.agent).
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, related_name="tool_call_set", db_index=False
    )
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
    # Observe mode: what enforce would have answered (blank: the call was enforced); then
    # ``decision`` is allow and ``detail`` says why it would have stopped.
    would_decision = models.CharField(max_length=20, choices=Decision.choices, blank=True)
    would_stop_reason = models.CharField(max_length=200, blank=True)
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
    # What was reported (ok, output, error), hashed: a retried report is recognised even when
    # an invalid output was not kept.
    result_hash = models.CharField(max_length=64, blank=True)

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

    # No index of its own: trace_run_idx starts with it (see Run.agent).
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events", db_index=False)
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


class ObservedSpan(models.Model):
    """One OpenTelemetry span of an observed run (agents/telemetry), with its raw attributes.

    The unique (run, span_id) makes a re-sent batch count once: a span already stored is skipped,
    and only new spans move the run's counters.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="spans", db_index=False)
    span_id = models.CharField(max_length=16)
    parent_span_id = models.CharField(max_length=16, blank=True)
    name = models.CharField(max_length=300)
    # agent, llm, tool, workflow, retrieval, embedding or other (agents/telemetry/conventions.py)
    kind = models.CharField(max_length=16)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    # unset, ok or error (the span's status code)
    status = models.CharField(max_length=8, default="unset")
    status_message = models.TextField(blank=True)
    attributes = models.JSONField(default=dict)
    events = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "span_id"], name="observedspan_run_span_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.span_id})"


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
    # Degraded by a person: refused until this time whatever its state (NULL or past: not forced).
    forced_until = models.DateTimeField(null=True, blank=True)
    forced_reason = models.TextField(blank=True)
    forced_by = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.tool}: {self.state}"

    def forced_at(self, now: datetime) -> bool:
        """Whether a person's degrade holds the breaker open at ``now``."""
        return self.forced_until is not None and self.forced_until > now


# --- monitoring: rollups, drift rules and alerts, golden runs (see agents/monitoring.py) -------

# The rollup dimension "every version of this agent" (and, with agent NULL, "every agent").
ALL_VERSIONS = "*"


class BucketSize(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class MetricRollup(models.Model):
    """Metrics of the runs that ended in one hour or day, per agent and agent version.

    Computed from raw runs, trace events, tool calls and approvals by the rollup job only;
    pages read these rows and never aggregate raw events. ``agent_version`` ``"*"`` is every
    version of the agent; ``agent`` NULL is every agent. Percentiles are nearest-rank.
    """

    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="rollups"
    )
    agent_version = models.CharField(max_length=100, blank=True)
    size = models.CharField(max_length=8, choices=BucketSize.choices)
    start = models.DateTimeField()

    runs = models.PositiveIntegerField(default=0)
    stop_reasons = models.JSONField(default=dict, help_text="{stop reason: runs}")
    # Runs decided in observe mode, and the stop enforcing would have given them (their first).
    observed_runs = models.PositiveIntegerField(default=0)
    would_stop_reasons = models.JSONField(default=dict, help_text="{would-have stop reason: runs}")
    tool_calls_p50 = models.FloatField(null=True, blank=True)
    tool_calls_p95 = models.FloatField(null=True, blank=True)
    requests = models.PositiveIntegerField(default=0, help_text="model steps reported")
    tokens_p50 = models.FloatField(null=True, blank=True)
    tokens_p95 = models.FloatField(null=True, blank=True)
    usd_sum = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    usd_avg = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    approvals = models.PositiveIntegerField(default=0, help_text="approval requests decided")
    approval_wait_p50 = models.FloatField(null=True, blank=True, help_text="seconds")
    approval_wait_p95 = models.FloatField(null=True, blank=True, help_text="seconds")
    tool_results = models.PositiveIntegerField(default=0, help_text="results with a latency")
    latency_p95 = models.FloatField(null=True, blank=True, help_text="ms, every tool")
    tool_latency_p95 = models.JSONField(default=dict, help_text="{tool: p95 ms}")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["start"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "agent_version", "size", "start"],
                name="rollup_unique_bucket",
            ),
            # NULLs are distinct in a unique constraint: the all-agents rows need their own.
            models.UniqueConstraint(
                fields=["agent_version", "size", "start"],
                condition=models.Q(agent__isnull=True),
                name="rollup_unique_all_agents_bucket",
            ),
        ]
        indexes = [models.Index(fields=["size", "start"], name="rollup_size_start_idx")]

    def __str__(self) -> str:
        return (
            f"{self.agent_id or 'all'}/{self.agent_version} {self.size} {self.start:%Y-%m-%d %H:%M}"
        )


class DriftMetric(models.TextChoices):
    STOP_RATE = "stop_rate", "Share of runs not ending ok"
    TOOL_CALLS_P50 = "tool_calls_p50", "Tool calls per run, p50"
    TOOL_CALLS_P95 = "tool_calls_p95", "Tool calls per run, p95"
    TOKENS_P50 = "tokens_p50", "Tokens per request, p50"
    TOKENS_P95 = "tokens_p95", "Tokens per request, p95"
    USD_AVG = "usd_avg", "USD per run, average"
    LATENCY_P95 = "latency_p95", "Tool latency p95 (ms)"
    APPROVAL_WAIT_P95 = "approval_wait_p95", "Approval wait p95 (s)"


class DriftBaseline(models.TextChoices):
    PREVIOUS_7_DAYS = "previous_7_days", "The previous 7 days"
    PINNED_VERSION = "pinned_version", "A pinned agent version"


class DriftDirection(models.TextChoices):
    UP = "up", "Rises"
    DOWN = "down", "Falls"
    BOTH = "both", "Moves either way"


class DriftAction(models.TextChoices):
    NONE = "none", "Alert only"
    REQUIRE_APPROVAL_FOR_WRITES = "require_approval_for_writes", "Require approval for all writes"
    DISABLE_AGENT = "disable_agent", "Disable the agent"


class DriftRule(models.Model):
    """Compare one metric of an agent (or every agent) with its baseline after each rollup.

    Every threshold that is set must be passed, and both the bucket and the baseline need
    ``min_samples`` samples (runs, requests, results or approvals), so noise stays quiet.
    """

    name = models.SlugField(max_length=100, unique=True)
    metric = models.CharField(max_length=32, choices=DriftMetric.choices)
    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="drift_rules"
    )
    agent_version = models.CharField(
        max_length=100, blank=True, help_text="blank: every version of the agent"
    )
    size = models.CharField(max_length=8, choices=BucketSize.choices, default=BucketSize.HOUR)
    baseline = models.CharField(
        max_length=20, choices=DriftBaseline.choices, default=DriftBaseline.PREVIOUS_7_DAYS
    )
    baseline_version = models.CharField(max_length=100, blank=True)
    direction = models.CharField(
        max_length=8, choices=DriftDirection.choices, default=DriftDirection.UP
    )
    relative_threshold = models.FloatField(
        null=True, blank=True, help_text="0.5 means a move of 50 % from the baseline mean"
    )
    z_threshold = models.FloatField(null=True, blank=True)
    min_samples = models.PositiveIntegerField(default=20)
    action = models.CharField(max_length=32, choices=DriftAction.choices, default=DriftAction.NONE)
    enabled = models.BooleanField(default=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(relative_threshold__isnull=False)
                | models.Q(z_threshold__isnull=False),
                name="driftrule_has_threshold",
            ),
            # A rule that acts must name the agent it acts on.
            models.CheckConstraint(
                condition=models.Q(action="none") | models.Q(agent__isnull=False),
                name="driftrule_action_needs_agent",
            ),
            models.CheckConstraint(
                condition=~models.Q(baseline="pinned_version") | ~models.Q(baseline_version=""),
                name="driftrule_pinned_needs_version",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def actor(self) -> str:
        """Who an acting rule's changes are audited as."""
        return f"rule:{self.name}"


class DriftAlert(models.Model):
    """One significant move of a rule's metric in one bucket (at most one per rule and bucket)."""

    rule = models.ForeignKey(DriftRule, on_delete=models.CASCADE, related_name="alerts")
    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="drift_alerts"
    )
    agent_version = models.CharField(max_length=100, blank=True)
    metric = models.CharField(max_length=32, choices=DriftMetric.choices)
    bucket_start = models.DateTimeField()
    value = models.FloatField()
    baseline_mean = models.FloatField()
    baseline_std = models.FloatField(null=True, blank=True)
    relative_change = models.FloatField(null=True, blank=True)
    z_score = models.FloatField(null=True, blank=True)
    samples = models.PositiveIntegerField()
    baseline_samples = models.PositiveIntegerField()
    action_taken = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "bucket_start"], name="one_alert_per_bucket"),
        ]
        indexes = [models.Index(fields=["-created_at", "-id"], name="driftalert_list_idx")]

    def __str__(self) -> str:
        return f"{self.rule_id} {self.metric} @ {self.bucket_start:%Y-%m-%d %H:%M}"


class GoldenRun(models.Model):
    """A finished run kept as a reference: its recording is replayed against policy changes.

    The recording is a copy of the trace taken when the run was marked, so trace retention
    never takes a golden run away.
    """

    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="golden")
    note = models.TextField(blank=True)
    recording = models.JSONField()
    marked_by = models.CharField(max_length=150)
    marked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-marked_at", "-id"]

    def __str__(self) -> str:
        return f"golden run {self.run_id}"


class KillSwitchMode(models.TextChoices):
    OFF = "off", "Off"
    DISABLE_WRITES = "disable_writes", "Disable writes"
    DISABLE_EXPENSIVE = "disable_expensive", "Disable expensive tools"
    STOP_ALL = "stop_all", "Stop all"


class KillSwitch(models.Model):
    """The one global kill switch (a single row, id 1)."""

    mode = models.CharField(max_length=32, choices=KillSwitchMode.choices, default="off")
    reason = models.TextField(blank=True)
    set_by = models.CharField(max_length=150, blank=True)
    set_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The table kept its name when the model moved here from opsconsole (migration 0008).
        db_table = "opsconsole_killswitch"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(mode__in=KillSwitchMode.values), name="killswitch_mode_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"kill switch: {self.mode}"

    @property
    def is_on(self) -> bool:
        return self.mode != KillSwitchMode.OFF


class McpToolSeen(models.Model):
    """A tool of an upstream MCP server as the console saw it (agents/mcp), pinned by a hash of
    its definition: a definition that changes upstream is held (hidden, its calls denied) until
    an admin accepts it. The effect its annotations suggest is only a hint for the admin."""

    server = models.CharField(max_length=64)
    tool = models.CharField(max_length=200, unique=True)  # the policy's name: <server>.<tool>
    definition = models.JSONField(default=dict)  # description, schemas, annotations as seen
    definition_hash = models.CharField(max_length=64)
    accepted_hash = models.CharField(max_length=64)
    accepted_definition = models.JSONField(default=dict)
    suggested_effect = models.CharField(max_length=8)  # read | write
    first_seen_at = models.DateTimeField(default=timezone.now)
    changed_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["tool"]

    def __str__(self) -> str:
        return self.tool

    @property
    def held(self) -> bool:
        return self.definition_hash != self.accepted_hash
