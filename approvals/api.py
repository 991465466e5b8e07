"""The reviewer API: the approval queue and decisions, for people and ChatOps bots."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals import selectors, services
from approvals.models import ApprovalStatus
from approvals.serializers import ApprovalPageSerializer, ApprovalSerializer, DecisionInSerializer
from opsconsole.authentication import IsOncall, IsReviewer

PAGE_SIZE_MAX = 200


class ApprovalListView(APIView):
    permission_classes = [IsOncall]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "status", str, enum=ApprovalStatus.values, description="default: pending"
            ),
            OpenApiParameter("limit", int, description="1-200, default 50"),
            OpenApiParameter("after", int, description="the next_after of the previous page"),
        ],
        responses=ApprovalPageSerializer,
        operation_id="approval_list",
        tags=["reviewer"],
    )
    def get(self, request: Request) -> Response:
        status = request.query_params.get("status", ApprovalStatus.PENDING)
        if status not in ApprovalStatus.values:
            raise exceptions.ValidationError(
                {"status": f"one of {', '.join(ApprovalStatus.values)}"}
            )
        try:
            limit = int(request.query_params.get("limit", 50))
            after_param = request.query_params.get("after")
            after = int(after_param) if after_param else None
        except ValueError:
            raise exceptions.ValidationError("limit and after must be integers.") from None
        if not 1 <= limit <= PAGE_SIZE_MAX:
            raise exceptions.ValidationError({"limit": f"between 1 and {PAGE_SIZE_MAX}"})
        requests = selectors.approval_list(status=status)
        if after is not None:
            requests = (
                requests.filter(id__gt=after)
                if status == ApprovalStatus.PENDING
                else requests.filter(id__lt=after)
            )
        page = list(requests[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return Response(
            {
                "results": ApprovalSerializer(page, many=True).data,
                "next_after": page[-1].pk if more and page else None,
            }
        )


class ApprovalDecisionView(APIView):
    permission_classes = [IsReviewer]

    @extend_schema(
        request=DecisionInSerializer,
        responses=ApprovalSerializer,
        operation_id="approval_decide",
        tags=["reviewer"],
    )
    def post(self, request: Request, request_id: int) -> Response:
        serializer = DecisionInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.approval_decide(
            request_id=request_id, reviewer=request.user, **serializer.validated_data
        )
        approval = selectors.approval_list(status="").get(pk=request_id)
        return Response(ApprovalSerializer(approval).data)
