"""The automation API for agents and their keys (admins, with a person's token): list, create,
issue a key (shown once), revoke, enable and disable. The same services as the agents pages,
so each change is audited and open pages refresh alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from agents.models import Agent, AgentKey
from agents.registry import selectors, services
from agents.registry.serializers import (
    AgentCreateSerializer,
    AgentEnabledSerializer,
    AgentKeyIssuedSerializer,
    AgentKeySerializer,
    AgentListSerializer,
    AgentSerializer,
    KeyIssueSerializer,
)
from opsconsole.audit import actor_name
from opsconsole.authentication import IsAdmin

TAGS = ["automation"]


def _valid(serializer_class: type[Serializer], request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise exceptions.ParseError("The body must be a JSON object.")
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _agent_data(agent: Agent, keys: Iterable[AgentKey] | None = None) -> dict[str, Any]:
    """An agent as the answers show it, with its keys newest first (``keys`` when prefetched)."""
    return {
        "name": agent.name,
        "description": agent.description,
        "enabled": agent.enabled,
        "paused": agent.paused,
        "disabled_reason": agent.disabled_reason,
        "disabled_by": agent.disabled_by,
        "disabled_at": agent.disabled_at,
        "created_at": agent.created_at,
        "last_used_at": agent.last_used_at,
        "keys": list(keys if keys is not None else agent.keys.order_by("-created_at", "-id")),
    }


class AgentListView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        responses=AgentListSerializer,
        operation_id="agent_list",
        tags=TAGS,
        description="Every agent with its keys (newest first) and its spend, as on the agents "
        "page.",
    )
    def get(self, request: Request) -> Response:
        rows = selectors.agent_admin_list_with_spend()
        results = [
            {**_agent_data(agent, agent.keys.all()), "spend": spend} for agent, spend in rows
        ]
        return Response(AgentListSerializer({"results": results}).data)

    @extend_schema(
        request=AgentCreateSerializer,
        responses={201: AgentSerializer},
        operation_id="agent_create",
        tags=TAGS,
        description="A new agent (no key yet: issue one). `tools` becomes its own allowlist in "
        "a new policy version. 409 `agent_exists` if the name is taken.",
    )
    def post(self, request: Request) -> Response:
        data = _valid(AgentCreateSerializer, request)
        agent = services.agent_create(
            name=data["name"],
            description=data["description"],
            tools=data["tools"] or None,
            actor=actor_name(request.user),
        )
        return Response(AgentSerializer(_agent_data(agent)).data, status=status.HTTP_201_CREATED)


class AgentDetailView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=AgentSerializer, operation_id="agent_get", tags=TAGS)
    def get(self, request: Request, name: str) -> Response:
        agent = selectors.agent_get(name=name)
        return Response(AgentSerializer(_agent_data(agent)).data)


class AgentKeyIssueView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        request=KeyIssueSerializer,
        responses={201: AgentKeyIssuedSerializer},
        operation_id="agent_key_issue",
        tags=TAGS,
        description="A new key for the agent. The raw key (`key`) is in this answer only: it is "
        "stored hashed and never shown again.",
    )
    def post(self, request: Request, name: str) -> Response:
        agent = selectors.agent_get(name=name)
        data = _valid(KeyIssueSerializer, request)
        key, raw = services.agent_key_issue(
            agent=agent, actor=actor_name(request.user), label=data["label"]
        )
        key.agent = agent
        # Like the page that shows a new key: never cached.
        return Response(
            {**AgentKeySerializer(key).data, "key": raw},
            status=status.HTTP_201_CREATED,
            headers={"Cache-Control": "no-store"},
        )


class AgentKeyRevokeView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        request=None,
        responses=AgentKeySerializer,
        operation_id="agent_key_revoke",
        tags=TAGS,
        description="The key stops working at once. Revoking a revoked key changes nothing.",
    )
    def post(self, request: Request, key_id: int) -> Response:
        key = services.agent_key_revoke(key_id=key_id, actor=actor_name(request.user))
        return Response(AgentKeySerializer(key).data)


class AgentEnabledView(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        request=AgentEnabledSerializer,
        responses=AgentSerializer,
        operation_id="agent_set_enabled",
        tags=TAGS,
        description="Enable or disable the agent (disabling needs a reason; its runs stop with "
        "`agent_disabled` at their next call). Setting the state it already has changes nothing.",
    )
    def put(self, request: Request, name: str) -> Response:
        agent = selectors.agent_get(name=name)
        data = _valid(AgentEnabledSerializer, request)
        agent = services.agent_set_enabled(
            agent=agent,
            enabled=data["enabled"],
            reason=data["reason"],
            actor=actor_name(request.user),
        )
        return Response(AgentSerializer(_agent_data(agent)).data)
