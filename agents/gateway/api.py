"""The agent gateway API (DRF), one view per operation. Views validate, call one service, answer."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from agents.gateway import selectors, services
from agents.gateway.serializers import (
    ResultOutcomeSerializer,
    RunCreateSerializer,
    RunFinishSerializer,
    RunSerializer,
    StepCreateSerializer,
    StepGateOutcomeSerializer,
    StepGateSerializer,
    StepOutcomeSerializer,
    StepUsageSerializer,
    ToolCallCreateSerializer,
    ToolCallSerializer,
    ToolResultSerializer,
    tool_call_payload,
)
from agents.models import Agent, Decision, Run
from approvals.services import approval_expire_if_due
from approvals.waits import approval_wait
from opsconsole import roles
from opsconsole.api_errors import UNAVAILABLE, error_response
from opsconsole.audit import actor_name
from opsconsole.authentication import IsAgent, IsOncall, authenticate_bearer, is_agent
from opsconsole.errors import NotFound
from opsconsole.limits import RunCreateRateThrottle, ToolCallRateThrottle, check_args_size

logger = logging.getLogger("opsconsole.api")


def _valid(serializer_class: type[Serializer], request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise exceptions.ParseError("The body must be a JSON object.")
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _agent(request: Request) -> Agent:
    """The calling agent, once ``IsAgent`` or ``is_agent`` has established that it is one.

    Bearer authentication makes the agent's own row the request's user; the stubs can only
    type ``request.user`` as a person.
    """
    return cast(Agent, request.user)


class RunCreateView(APIView):
    permission_classes = [IsAgent]
    throttle_classes = [RunCreateRateThrottle]

    @extend_schema(
        request=RunCreateSerializer,
        responses={201: RunSerializer, 200: RunSerializer},
        operation_id="run_create",
        tags=["agent"],
    )
    def post(self, request: Request) -> Response:
        data = _valid(RunCreateSerializer, request)
        run, created = services.run_start(
            agent=_agent(request),
            task=data["task"],
            agent_version=data.get("agent_version", ""),
            budgets={k: v for k, v in data.get("budgets", {}).items() if v is not None},
            idempotency_key=data.get("idempotency_key"),
            metadata=data.get("metadata") or {},
        )
        return Response(
            RunSerializer(run).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class RunDetailView(APIView):
    """An agent sees its own runs; people with a role see any run."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=RunSerializer, operation_id="run_get", tags=["agent"])
    def get(self, request: Request, run_id: int) -> Response:
        run: Run | None
        if is_agent(request.user):
            run = selectors.run_get_for_agent(agent=_agent(request), run_id=run_id)
        elif roles.has_role(request.user, roles.ONCALL):
            run = Run.objects.select_related("agent").filter(pk=run_id).first()
            if run is None:
                raise NotFound(f"No run {run_id}.")
        else:
            raise exceptions.PermissionDenied("This needs the oncall role.")
        return Response(RunSerializer(run).data)


class StepCreateView(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        request=StepCreateSerializer,
        responses=StepOutcomeSerializer,
        operation_id="step_create",
        tags=["agent"],
    )
    def post(self, request: Request, run_id: int) -> Response:
        data = _valid(StepCreateSerializer, request)
        outcome = services.step_record(agent=_agent(request), run_id=run_id, **data)
        return Response(
            StepOutcomeSerializer(
                {
                    "decision": outcome.decision,
                    "stop_reason": outcome.stop_reason or None,
                    "run": outcome.run,
                }
            ).data
        )


class StepGateView(APIView):
    """Before a model call: the step is counted, or refused with the budget it would break."""

    permission_classes = [IsAgent]

    @extend_schema(
        request=StepGateSerializer,
        responses=StepGateOutcomeSerializer,
        operation_id="step_gate",
        tags=["agent"],
    )
    def post(self, request: Request, run_id: int) -> Response:
        data = _valid(StepGateSerializer, request)
        outcome = services.step_gate(agent=_agent(request), run_id=run_id, **data)
        return Response(
            StepGateOutcomeSerializer(
                {
                    "decision": outcome.decision,
                    "stop_reason": outcome.stop_reason or None,
                    "detail": outcome.detail,
                    "ticket": outcome.ticket,
                    "step": outcome.step,
                    "run": outcome.run,
                }
            ).data
        )


class StepUsageView(APIView):
    """After a gated model call: what it used."""

    permission_classes = [IsAgent]

    @extend_schema(
        request=StepUsageSerializer,
        responses=StepOutcomeSerializer,
        operation_id="step_usage",
        tags=["agent"],
    )
    def post(self, request: Request, run_id: int, ticket: int) -> Response:
        data = _valid(StepUsageSerializer, request)
        outcome = services.step_usage_report(
            agent=_agent(request), run_id=run_id, ticket=ticket, **data
        )
        return Response(
            StepOutcomeSerializer(
                {
                    "decision": outcome.decision,
                    "stop_reason": outcome.stop_reason or None,
                    "run": outcome.run,
                }
            ).data
        )


class ToolCallCreateView(APIView):
    permission_classes = [IsAgent]
    throttle_classes = [ToolCallRateThrottle]

    @extend_schema(
        request=ToolCallCreateSerializer,
        responses=ToolCallSerializer,
        operation_id="tool_call_create",
        tags=["agent"],
    )
    def post(self, request: Request, run_id: int) -> Response:
        data = _valid(ToolCallCreateSerializer, request)
        check_args_size(data.get("args"))
        tool_call = services.tool_call_decide(
            agent=_agent(request),
            run_id=run_id,
            tool=data["tool"],
            args=data.get("args") or {},
            idempotency_key=data.get("idempotency_key"),
        )
        return Response(tool_call_payload(tool_call))


class ToolResultView(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        request=ToolResultSerializer,
        responses=ResultOutcomeSerializer,
        operation_id="tool_call_result",
        tags=["agent"],
    )
    def post(self, request: Request, tool_call_id: int) -> Response:
        data = _valid(ToolResultSerializer, request)
        outcome = services.tool_call_report(
            agent=_agent(request), tool_call_id=tool_call_id, **data
        )
        return Response(
            ResultOutcomeSerializer(
                {
                    "valid": outcome.valid,
                    "stop_reason": outcome.stop_reason,
                    "errors": outcome.errors,
                    "run": outcome.run,
                }
            ).data
        )


class RunFinishView(APIView):
    permission_classes = [IsAgent]

    @extend_schema(
        request=RunFinishSerializer,
        responses=RunSerializer,
        operation_id="run_finish",
        tags=["agent"],
    )
    def post(self, request: Request, run_id: int) -> Response:
        data = _valid(RunFinishSerializer, request)
        run = services.run_finish(agent=_agent(request), run_id=run_id, **data)
        return Response(RunSerializer(run).data)


class RunCancelView(APIView):
    permission_classes = [IsOncall]

    @extend_schema(
        request=None, responses=RunSerializer, operation_id="run_cancel", tags=["operator"]
    )
    def post(self, request: Request, run_id: int) -> Response:
        reason = request.data.get("reason", "") if isinstance(request.data, dict) else ""
        run = services.run_cancel(
            run_id=run_id, actor=actor_name(request.user), reason=str(reason)[:2000]
        )
        return Response(RunSerializer(run).data)


# --- long-poll: GET /api/v1/tool-calls/{id}?wait=N --------------------------------------------
#
# An async view: a waiting agent holds no worker thread, only a coroutine that sleeps until the
# request's state may have changed (approvals.waits: woken by the decision, the expiry or the
# cancel after it commits, with a slow safety poll), then reads it again (a thread for one
# indexed query). It also wakes at the request's deadline, to expire it.


def _poll_tool_call(agent: Agent, tool_call_id: int) -> tuple[dict[str, Any], bool]:
    tool_call = selectors.tool_call_get_for_agent(agent=agent, tool_call_id=tool_call_id)
    request = getattr(tool_call, "approval", None)
    if (
        tool_call.decision == Decision.PENDING_APPROVAL
        and request is not None
        and approval_expire_if_due(request)
    ):
        tool_call = selectors.tool_call_get_for_agent(agent=agent, tool_call_id=tool_call_id)
    return tool_call_payload(tool_call), tool_call.decision == Decision.PENDING_APPROVAL


def _until_expiry(payload: dict[str, Any]) -> float:
    """Seconds until the pending request expires (the poll expires it then), at least 0.05."""
    approval = payload.get("approval") or {}
    try:
        expires = datetime.fromisoformat(str(approval["expires_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 1.0
    return max(0.05, (expires - datetime.now(UTC)).total_seconds() + 0.01)


@extend_schema(
    parameters=[
        OpenApiParameter("wait", int, description="seconds to wait for a pending approval (0-30)")
    ],
    responses=ToolCallSerializer,
    operation_id="tool_call_get",
    tags=["agent"],
)
@csrf_exempt  # bearer-authenticated, never by cookie; any other method is the API's JSON 405
async def tool_call_detail(request: HttpRequest, tool_call_id: int) -> JsonResponse:
    if request.method != "GET":
        return error_response(
            "method_not_allowed",
            f'Method "{request.method}" not allowed.',
            405,
            headers={"Allow": "GET"},
        )
    try:
        wait = float(request.GET.get("wait", "0") or 0)
    except ValueError:
        return error_response("malformed", "wait must be a number of seconds.", 400)
    if not 0 <= wait <= settings.OPSCONSOLE_MAX_WAIT_SECONDS:
        return error_response(
            "malformed", f"wait must be between 0 and {settings.OPSCONSOLE_MAX_WAIT_SECONDS}.", 400
        )
    try:
        agent, _ = await sync_to_async(authenticate_bearer)(
            request.headers.get("Authorization", "")
        )
    except exceptions.AuthenticationFailed as exc:
        return error_response(
            "unauthenticated",
            str(exc.detail),
            401,
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    except DatabaseError:
        return JsonResponse(UNAVAILABLE, status=503)
    if not is_agent(agent):
        return error_response("forbidden", "This endpoint is for agents; use an agent key.", 403)
    deadline = time.monotonic() + wait
    try:
        while True:
            payload, pending = await sync_to_async(_poll_tool_call)(agent, tool_call_id)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                return JsonResponse(payload)
            await approval_wait(tool_call_id, min(remaining, _until_expiry(payload)))
    except NotFound as exc:
        return error_response(exc.code, exc.detail, 404)
    except DatabaseError as exc:
        logger.warning("control plane unavailable: %s", exc)
        return JsonResponse(UNAVAILABLE, status=503)
