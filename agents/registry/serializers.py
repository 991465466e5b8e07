"""Shapes of the automation API's agents and keys (``/api/v1/agents``, ``/api/v1/agent-keys``)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from agents.registry.services import AGENT_NAME


class AgentKeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    agent = serializers.CharField(source="agent.name")
    # The stubs type Field.label, which a declared field of that name shadows only in them.
    label = serializers.CharField(allow_blank=True)  # type: ignore[assignment]
    prefix = serializers.CharField(help_text="the key's first characters, to recognise it")
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class AgentKeyIssuedSerializer(AgentKeySerializer):
    key = serializers.CharField(
        help_text="the raw key (aok_...): shown in this answer only, never again"
    )


class SpendSerializer(serializers.Serializer):
    last_hour = serializers.FloatField(help_text="USD of the runs started in the last hour")
    last_day = serializers.FloatField(help_text="USD of the runs started in the last day")


class AgentSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    enabled = serializers.BooleanField()
    paused = serializers.BooleanField()
    disabled_reason = serializers.CharField(allow_blank=True)
    disabled_by = serializers.CharField(allow_blank=True)
    disabled_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    keys = AgentKeySerializer(many=True, help_text="newest first")


class AgentWithSpendSerializer(AgentSerializer):
    spend = SpendSerializer()


class AgentListSerializer(serializers.Serializer):
    results = AgentWithSpendSerializer(many=True)


class AgentCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(
        f"^{AGENT_NAME.pattern}$", max_length=100, help_text="letters, digits, - and _"
    )
    description = serializers.CharField(required=False, allow_blank=True, default="")
    tools = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        default=list,
        help_text="its own allowlist (a new policy version); empty: every globally allowed tool",
    )


class KeyIssueSerializer(serializers.Serializer):
    label = serializers.CharField(  # type: ignore[assignment]
        max_length=100, required=False, allow_blank=True, default=""
    )


class AgentEnabledSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    reason = serializers.CharField(
        max_length=2000,
        required=False,
        allow_blank=True,
        default="",
        help_text="required to disable: its runs stop with agent_disabled at their next call",
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        # The same rule as the agent page's form (AgentEnableForm).
        data["reason"] = data["reason"].strip()
        if not data["enabled"] and not data["reason"]:
            raise serializers.ValidationError(
                {"reason": "Say why the agent is disabled; its runs will stop."}
            )
        return data
