"""Shapes of the automation API's runs list (``GET /api/v1/runs``)."""

from __future__ import annotations

from rest_framework import serializers

from agents.gateway.serializers import RunSerializer


class RunPageSerializer(serializers.Serializer):
    results = RunSerializer(many=True)
    next_after = serializers.CharField(
        allow_null=True,
        help_text="pass as `after` (with the same filters and sort) for the next page; "
        "null on the last page",
    )
