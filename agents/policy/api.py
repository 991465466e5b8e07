"""Operator API: the kill switch."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.models import KillSwitchMode
from agents.policy.selectors import kill_switch_current
from agents.policy.services import kill_switch_set
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
