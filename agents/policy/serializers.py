"""Shapes of the automation API's policy endpoints (``/api/v1/policy``): the current version as
YAML, a dry run of a draft against recent runs, and a publish based on a known version."""

from __future__ import annotations

from typing import Any

import yaml
from rest_framework import serializers

from agents.gateway.serializers import StopReasonField
from agents.policy.document import PolicyError, normalise, parse_yaml
from opsconsole.errors import BadRequest

DRY_RUN_LIMIT_MAX = 1000


def document_from_yaml(text: str) -> dict[str, Any]:
    """A draft's YAML as a normalised policy document, checked as the policy editor checks it
    (``parse_yaml``, then ``normalise``). The problems found are a 400 ``invalid_policy`` whose
    detail is the editor's list of messages."""
    try:
        return normalise(parse_yaml(text))
    except PolicyError as error:
        raise BadRequest(error.errors, code="invalid_policy") from None
    except yaml.YAMLError as error:
        # parse_yaml lets the YAML reader's own refusal (a control character) escape; found by
        # the API fuzzer. Said the way parse_yaml says every other YAML error.
        raise BadRequest([f"not valid YAML: {error}"], code="invalid_policy") from None


class PolicyVersionSerializer(serializers.Serializer):
    version = serializers.IntegerField(source="number")
    yaml = serializers.CharField(help_text="the whole policy; importing it gives the same policy")
    author = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    restored_from = serializers.IntegerField(allow_null=True)


class PolicyDraftSerializer(serializers.Serializer):
    yaml = serializers.CharField(help_text="the whole draft policy, as in the editor")
    limit = serializers.IntegerField(
        min_value=1,
        max_value=DRY_RUN_LIMIT_MAX,
        default=DRY_RUN_LIMIT_MAX,
        help_text="how many of the latest ended runs to replay",
    )


class PolicyPublishSerializer(serializers.Serializer):
    yaml = serializers.CharField(help_text="the whole policy")
    reason = serializers.CharField(max_length=2000, help_text="kept with the version")
    base_version = serializers.IntegerField(
        min_value=1,
        help_text="the version this draft was made from; if another was published since, the "
        "publish is refused (409 policy_changed), as in the editor",
    )

    def validate_reason(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("A reason is required.")
        return value


class ReplayedRunSerializer(serializers.Serializer):
    run_id = serializers.IntegerField()
    agent = serializers.CharField()
    agent_version = serializers.CharField(allow_blank=True)
    old_stop_reason = StopReasonField(allow_null=False, help_text="how the run stopped")
    new_stop_reason = StopReasonField(
        help_text="how the draft would have stopped it; null: it would have gone on past the "
        "recording",
    )
    newly_stopped = serializers.BooleanField(
        help_text="the draft would have stopped this run where, or why, it did not stop"
    )
    differences = serializers.ListField(
        child=serializers.CharField(), help_text="each decision that would change, in words"
    )


class DryRunSerializer(serializers.Serializer):
    replayed = serializers.IntegerField(help_text="ended runs replayed (the latest first)")
    skipped = serializers.IntegerField(help_text="runs whose traces were purged")
    stopped = serializers.IntegerField(
        help_text="runs the draft would have stopped: 'would have stopped N of the last M runs'"
    )
    changed = serializers.IntegerField(help_text="runs that would have gone differently")
    runs = ReplayedRunSerializer(
        many=True, help_text="the runs that would have gone differently, stopped ones first"
    )
