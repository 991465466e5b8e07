from __future__ import annotations

from rest_framework import serializers

from approvals.models import ApprovalRequest


class DecisionInSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=["approve", "reject"])
    comment = serializers.CharField(max_length=4000, required=False, allow_blank=True, default="")


class DecisionOutSerializer(serializers.Serializer):
    reviewer = serializers.CharField(source="reviewer.username")
    verdict = serializers.CharField()
    comment = serializers.CharField()
    at = serializers.DateTimeField(source="created_at")


class ApprovalSerializer(serializers.ModelSerializer):
    run = serializers.IntegerField(source="run_id")
    tool_call = serializers.IntegerField(source="tool_call_id")
    agent = serializers.CharField(source="agent.name")
    decisions = DecisionOutSerializer(many=True)

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "status",
            "run",
            "tool_call",
            "agent",
            "tool",
            "args",
            "reviewers_required",
            "decisions",
            "created_at",
            "expires_at",
            "decided_at",
        ]


class ApprovalPageSerializer(serializers.Serializer):
    results = ApprovalSerializer(many=True)
    next_after = serializers.IntegerField(allow_null=True)
