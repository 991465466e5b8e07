"""Input and output shapes of the gateway API (SPEC.md, "Gateway API (v1)")."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents import stop_reasons
from agents.models import (
    BIGINT_COLUMN_MAX,
    INT_COLUMN_MAX,
    USD_COLUMN_MAX,
    Decision,
    Run,
    ToolCall,
)
from agents.policy.document import MAX_TOOL_NAME, TOOL_NAME_PATTERN

# The names a policy can hold (the MCP convention, 1-128 characters): a longer one could never be
# allowed, and its denial would not fit the stop-reason columns.
TOOL_NAME = TOOL_NAME_PATTERN

# The closed vocabulary of SPEC.md as the schema states it: a plain reason, or a per-tool kind
# followed by ``:<tool>``. A generated client sees a string with this pattern.
STOP_REASON_PATTERN = (
    rf"^({'|'.join(stop_reasons.PLAIN)})$|^({'|'.join(stop_reasons.PER_TOOL)}):[^\s]+$"
)
STOP_REASON_SCHEMA = {
    "type": "string",
    "pattern": STOP_REASON_PATTERN,
    "description": "Why the run stopped, from a closed vocabulary: "
    + ", ".join(f"`{reason}`" for reason in stop_reasons.PLAIN)
    + "; or `<kind>:<tool>` naming the tool, with kind one of "
    + ", ".join(f"`{kind}`" for kind in stop_reasons.PER_TOOL)
    + " (e.g. `tool_denied:email.send`).",
    "example": "tool_denied:email.send",
}
STEP_DECISIONS = ("continue", "stop")


class NamedSchemaField(serializers.CharField):
    """A string whose schema is one named component shared by every answer that holds it
    (``StopReason``, ``StepDecision``), so a generated client names the type once."""

    def __init__(self, *, component: str, schema: dict[str, Any], **kwargs: Any) -> None:
        self.component = component
        self.component_schema = schema
        super().__init__(**kwargs)


class NamedSchemaFieldExtension(OpenApiSerializerFieldExtension):
    target_class = NamedSchemaField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        field = self.target
        component = ResolvedComponent(
            name=field.component,
            type=ResolvedComponent.SCHEMA,
            object=field.component,
            schema=field.component_schema,
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


def StopReasonField(**kwargs: Any) -> NamedSchemaField:
    """A stop reason in an answer: null (by default) while nothing stopped."""
    kwargs.setdefault("allow_null", True)
    return NamedSchemaField(component="StopReason", schema=STOP_REASON_SCHEMA, **kwargs)


def StepDecisionField(**kwargs: Any) -> NamedSchemaField:
    return NamedSchemaField(
        component="StepDecision",
        schema={"type": "string", "enum": list(STEP_DECISIONS)},
        **kwargs,
    )


def ToolCallDecisionField(**kwargs: Any) -> NamedSchemaField:
    return NamedSchemaField(
        component="ToolCallDecision",
        schema={
            "type": "string",
            "enum": list(Decision.values),
            "description": "`allow`: call the tool now; `pending_approval`: wait for reviewers "
            "(long-poll the tool call); `stop`: the run is over, see `stop_reason`.",
        },
        **kwargs,
    )


class UsdField(serializers.DecimalField):
    """US dollars, rounded to micro-dollars: a float such as 0.1 + 0.2 is fine, not a 400."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            max_digits=12, decimal_places=6, min_value=0, coerce_to_string=False, **kwargs
        )

    def validate_precision(self, value: Decimal) -> Decimal:
        try:
            rounded = value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
        except InvalidOperation:
            # A number like 1e308 cannot be rounded to micro-dollars (found by the API fuzzer).
            self.fail("max_digits", max_digits=self.max_digits)
        return super().validate_precision(rounded)


# The largest values the run's columns hold (found by the API fuzzer: a larger max_usd was
# stored by SQLite and then made every read of the run fail).
_INT_MAX = INT_COLUMN_MAX
_BIGINT_MAX = BIGINT_COLUMN_MAX
_USD_MAX = float(USD_COLUMN_MAX)


class BudgetsSerializer(serializers.Serializer):
    max_steps = serializers.IntegerField(
        min_value=0, max_value=_INT_MAX, required=False, allow_null=True
    )
    max_seconds = serializers.IntegerField(
        min_value=0, max_value=_INT_MAX, required=False, allow_null=True
    )
    max_tool_calls = serializers.IntegerField(
        min_value=0, max_value=_INT_MAX, required=False, allow_null=True
    )
    max_usd = serializers.FloatField(
        min_value=0, max_value=_USD_MAX, required=False, allow_null=True
    )
    max_tokens = serializers.IntegerField(
        min_value=0, max_value=_BIGINT_MAX, required=False, allow_null=True
    )

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise serializers.ValidationError(f"unknown budgets: {', '.join(sorted(unknown))}")
        return super().to_internal_value(data)


class RunCreateSerializer(serializers.Serializer):
    task = serializers.CharField(max_length=10_000)
    agent_version = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default=""
    )
    budgets = BudgetsSerializer(required=False)
    idempotency_key = serializers.CharField(max_length=200, required=False, allow_null=True)
    metadata = serializers.DictField(required=False)


class StepCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["llm"], default="llm")
    model = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    tokens_in = serializers.IntegerField(min_value=0, max_value=10**9, default=0)
    tokens_out = serializers.IntegerField(min_value=0, max_value=10**9, default=0)
    usd = UsdField(default=0)
    latency_ms = serializers.IntegerField(min_value=0, max_value=86_400_000, default=0)
    summary = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class StepGateSerializer(serializers.Serializer):
    """Asked before a model call (``POST /runs/{id}/steps/gate``)."""

    model = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    estimate_tokens = serializers.IntegerField(
        min_value=0,
        max_value=10**9,
        default=0,
        help_text="tokens the call is expected to use (checked against max_tokens)",
    )
    estimate_usd = UsdField(default=0, help_text="what the call is expected to cost (max_usd)")
    idempotency_key = serializers.CharField(max_length=200, required=False, allow_null=True)


class StepUsageSerializer(serializers.Serializer):
    """Reported after a gated model call (``POST /runs/{id}/steps/{ticket}/usage``)."""

    tokens_in = serializers.IntegerField(min_value=0, max_value=10**9, default=0)
    tokens_out = serializers.IntegerField(min_value=0, max_value=10**9, default=0)
    usd = UsdField(default=0)
    latency_ms = serializers.IntegerField(min_value=0, max_value=86_400_000, default=0)
    summary = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class ToolCallCreateSerializer(serializers.Serializer):
    tool = serializers.RegexField(TOOL_NAME, max_length=MAX_TOOL_NAME)
    args = serializers.DictField(required=False, default=dict)
    idempotency_key = serializers.CharField(max_length=200, required=False, allow_null=True)


class ToolResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    output = serializers.JSONField(required=False, allow_null=True, default=None)
    error = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")
    latency_ms = serializers.IntegerField(
        min_value=0, max_value=86_400_000, required=False, allow_null=True
    )
    usd = UsdField(required=False, allow_null=True)


class RunFinishSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["succeeded", "failed"])
    answer = serializers.CharField(max_length=100_000, required=False, allow_blank=True, default="")
    error = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")


class BudgetsOutSerializer(serializers.Serializer):
    max_steps = serializers.IntegerField(allow_null=True)
    max_seconds = serializers.IntegerField(allow_null=True)
    max_tool_calls = serializers.IntegerField(allow_null=True)
    max_usd = serializers.FloatField(allow_null=True)
    max_tokens = serializers.IntegerField(allow_null=True)


class UsageSerializer(serializers.Serializer):
    steps = serializers.IntegerField()
    tool_calls = serializers.IntegerField()
    tokens = serializers.IntegerField()
    usd = serializers.FloatField()
    seconds = serializers.FloatField(help_text="active time, what max_seconds bounds")
    waiting_seconds = serializers.FloatField(
        help_text="time spent waiting for a human decision (not counted against max_seconds)"
    )


class RunSerializer(serializers.ModelSerializer):
    agent = serializers.CharField(source="agent.name")
    stop_reason = serializers.SerializerMethodField()
    budgets = BudgetsOutSerializer(source="budgets_dict")
    usage = UsageSerializer(source="usage_dict")

    class Meta:
        model = Run
        fields = [
            "id",
            "agent",
            "agent_version",
            "task",
            "status",
            "stop_reason",
            "budgets",
            "usage",
            "policy_version",
            "started_at",
            "ended_at",
        ]

    @extend_schema_field(StopReasonField())
    def get_stop_reason(self, run: Run) -> str | None:
        return run.stop_reason or None


class ApprovalRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    reviewers_required = serializers.IntegerField()
    approvals = serializers.IntegerField()
    expires_at = serializers.DateTimeField()


class ToolCallSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    tool = serializers.CharField()
    decision = ToolCallDecisionField()
    stop_reason = StopReasonField()
    detail = serializers.CharField(allow_blank=True)
    approval = ApprovalRefSerializer(allow_null=True)
    run = RunSerializer()


class StepOutcomeSerializer(serializers.Serializer):
    decision = StepDecisionField()
    stop_reason = StopReasonField()
    run = RunSerializer()


class StepGateOutcomeSerializer(serializers.Serializer):
    decision = StepDecisionField()
    stop_reason = StopReasonField()
    detail = serializers.CharField(allow_blank=True)
    ticket = serializers.IntegerField(
        allow_null=True, help_text="report the call's usage with it (null when stopped)"
    )
    step = serializers.IntegerField(allow_null=True, help_text="the step's number in the run")
    run = RunSerializer()


class ResultOutcomeSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    stop_reason = StopReasonField()
    # DRF's metaclass takes declared fields off the class, so this does not replace
    # Serializer.errors at run time; the stubs see only the clash.
    errors = serializers.ListField(child=serializers.CharField())  # type: ignore[assignment]
    run = RunSerializer()


def tool_call_payload(tool_call: ToolCall) -> dict[str, Any]:
    approval = None
    request = getattr(tool_call, "approval", None) if tool_call.pk else None
    if request is not None:
        approval = {
            "id": request.pk,
            "status": request.status,
            "reviewers_required": request.reviewers_required,
            "approvals": request.decisions.filter(verdict="approve").count(),
            "expires_at": request.expires_at,
        }
    return ToolCallSerializer(
        {
            "id": tool_call.pk,
            "tool": tool_call.tool,
            "decision": tool_call.decision,
            "stop_reason": tool_call.stop_reason or None,
            "detail": tool_call.detail,
            "approval": approval,
            "run": tool_call.run,
        }
    ).data
