"""Operator API: the kill switch; the automation API's policy endpoints (read, dry run,
publish), on the editor's services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.models import KillSwitchMode, PolicyVersion
from agents.monitoring.replay import ReplayResult, policy_dry_run
from agents.policy.document import dump_yaml
from agents.policy.selectors import (
    kill_switch_current,
    policy_current,
    policy_version_with_previous,
)
from agents.policy.serializers import (
    DryRunSerializer,
    PolicyDraftSerializer,
    PolicyPublishSerializer,
    PolicyVersionSerializer,
    document_from_yaml,
)
from agents.policy.services import kill_switch_set, policy_publish
from opsconsole.audit import actor_name
from opsconsole.authentication import IsAdmin, IsOncall


class KillSwitchInSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=KillSwitchMode.values)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class KillSwitchSerializer(serializers.Serializer):
    mode = serializers.CharField()
    reason = serializers.CharField()
    set_by = serializers.CharField()
    set_at = serializers.DateTimeField(allow_null=True)


class KillSwitchView(APIView):
    def get_permissions(self):
        return [IsAdmin()] if self.request.method == "PUT" else [IsOncall()]

    @extend_schema(
        responses=KillSwitchSerializer, operation_id="kill_switch_get", tags=["operator"]
    )
    def get(self, request: Request) -> Response:
        return Response(KillSwitchSerializer(kill_switch_current()).data)

    @extend_schema(
        request=KillSwitchInSerializer,
        responses=KillSwitchSerializer,
        operation_id="kill_switch_set",
        tags=["operator"],
    )
    def put(self, request: Request) -> Response:
        serializer = KillSwitchInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        switch = kill_switch_set(actor=actor_name(request.user), **serializer.validated_data)
        return Response(KillSwitchSerializer(switch).data)


# --- the automation API: policy as code ---------------------------------------------------------


class PolicyView(APIView):
    """``/api/v1/policy``: read the version in force (on-call and up, as the policy page);
    publish a new one (admins, as the editor)."""

    def get_permissions(self):
        return [IsAdmin()] if self.request.method == "POST" else [IsOncall()]

    @extend_schema(
        responses=PolicyVersionSerializer,
        operation_id="policy_get",
        tags=["automation"],
        description="The policy in force as YAML, with its version number: keep the number as "
        "the `base_version` of a publish.",
    )
    def get(self, request: Request) -> Response:
        version, _ = policy_version_with_previous(number=policy_current().version)
        return Response(_version_data(version))

    @extend_schema(
        request=PolicyPublishSerializer,
        responses={201: PolicyVersionSerializer},
        operation_id="policy_publish",
        tags=["automation"],
        description="Publish a new version; it governs the very next gateway decision. Invalid "
        "YAML or policy: 400 `invalid_policy` with the editor's problems. Another version "
        "published since `base_version`: 409 `policy_changed`, nothing saved.",
    )
    def post(self, request: Request) -> Response:
        data = _valid(PolicyPublishSerializer, request)
        version = policy_publish(
            document=document_from_yaml(data["yaml"]),
            author=actor_name(request.user),
            reason=data["reason"],
            based_on=data["base_version"],
        )
        return Response(_version_data(version), status=status.HTTP_201_CREATED)


class PolicyDryRunView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        request=PolicyDraftSerializer,
        responses=DryRunSerializer,
        operation_id="policy_dry_run",
        tags=["automation"],
        description="Replay the latest ended runs against a draft, as the editor's dry run: "
        "nothing is saved and no tool is called. Invalid YAML or policy: 400 `invalid_policy`.",
    )
    def post(self, request: Request) -> Response:
        data = _valid(PolicyDraftSerializer, request)
        dry_run = policy_dry_run(document_from_yaml(data["yaml"]), limit=data["limit"])
        stopped = dry_run.stopped
        others = [result for result in dry_run.changed if not result.newly_stopped]
        return Response(
            DryRunSerializer(
                {
                    "replayed": dry_run.replayed,
                    "skipped": dry_run.skipped,
                    "stopped": len(stopped),
                    "changed": len(dry_run.changed),
                    "runs": [_replayed(result) for result in stopped + others],
                }
            ).data
        )


def _valid(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise exceptions.ParseError("The body must be a JSON object.")
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _version_data(version: PolicyVersion) -> dict[str, Any]:
    return PolicyVersionSerializer(
        {
            "number": version.number,
            "yaml": dump_yaml(version.document),
            "author": version.author,
            "reason": version.reason,
            "created_at": version.created_at,
            "restored_from": version.restored_from,
        }
    ).data


def _replayed(result: ReplayResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "agent": result.agent,
        "agent_version": result.agent_version,
        "old_stop_reason": result.old_stop_reason,
        "new_stop_reason": result.new_stop_reason,
        "newly_stopped": result.newly_stopped,
        "differences": result.differences(),
    }
