"""The automation API's runs list: ``GET /api/v1/runs`` with the runs page's filters and keyset
pages (on-call and up, with a person's token). ``POST /api/v1/runs`` on the same path is the
agents' run creation, unchanged (``agents.gateway.api.RunCreateView``)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response

from agents import stop_reasons
from agents.gateway.api import RunCreateView
from agents.gateway.serializers import RunSerializer
from agents.models import RunStatus
from agents.runs import selectors
from agents.runs.forms import RANGES, RunFilterForm
from agents.runs.serializers import RunPageSerializer
from opsconsole.authentication import IsOncall
from opsconsole.pagination import AmountCursor, KeysetCursor

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200

RUN_LIST_PARAMETERS = [
    OpenApiParameter("agent", str, description="the agent's name"),
    OpenApiParameter("status", str, enum=RunStatus.values),
    OpenApiParameter(
        "stop_reason",
        str,
        description="a stop reason kind (`tool_denied` matches every `tool_denied:<tool>`) or a "
        f"full reason (`tool_denied:email.send`); kinds: {', '.join(stop_reasons.ALL_KINDS)}",
    ),
    OpenApiParameter(
        "range",
        str,
        enum=list(RANGES),
        description="started in the last hour, day or week (ignored when `since` is given)",
    ),
    OpenApiParameter("since", str, description="started at or after (ISO 8601)"),
    OpenApiParameter("until", str, description="started before (ISO 8601)"),
    OpenApiParameter("q", str, description="search the task text"),
    OpenApiParameter("tool", str, description="runs that asked for this tool at least once"),
    OpenApiParameter(
        "sort",
        str,
        enum=["newest", "cost"],
        description="newest first (default) or most expensive first",
    ),
    OpenApiParameter("limit", int, description=f"1-{PAGE_SIZE_MAX}, default {PAGE_SIZE_DEFAULT}"),
    OpenApiParameter("after", str, description="the `next_after` of the previous page"),
]


class RunCollectionView(RunCreateView):
    """``/api/v1/runs``: people list runs (GET); agents start them (POST, inherited as is)."""

    def get_permissions(self):
        if self.request.method == "GET":
            return [IsOncall()]
        return super().get_permissions()

    def get_throttles(self):
        # The per-agent rate limit is for starting runs, not for people reading them.
        if self.request.method == "GET":
            return []
        return super().get_throttles()

    @extend_schema(
        parameters=RUN_LIST_PARAMETERS,
        responses=RunPageSerializer,
        operation_id="run_list",
        tags=["automation"],
        description="One page of runs, newest first (or most expensive first), with the runs "
        "page's filters. Keyset pages: the thousandth page costs what the first does.",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        sort = params.get("sort") or "newest"
        if sort not in ("newest", "cost"):
            raise exceptions.ValidationError({"sort": "newest or cost"})
        # The page's own form validates the filters (one copy of them); the page drops an
        # invalid filter and shows why, the API refuses the request.
        form = RunFilterForm({key: params.get(key) for key in params if key != "sort"})
        if not form.is_valid():
            raise exceptions.ValidationError(
                {
                    name: [str(problem) for problem in problems]
                    for name, problems in form.errors.items()
                }
            )
        filters = {**form.selector_filters(), "sort": sort}
        try:
            limit = int(params.get("limit", PAGE_SIZE_DEFAULT))
        except ValueError:
            raise exceptions.ValidationError({"limit": "an integer"}) from None
        if not 1 <= limit <= PAGE_SIZE_MAX:
            raise exceptions.ValidationError({"limit": f"between 1 and {PAGE_SIZE_MAX}"})
        cursor: KeysetCursor | AmountCursor | None = None
        if params.get("after"):
            cursor_type = AmountCursor if sort == "cost" else KeysetCursor
            cursor = cursor_type.decode(params["after"])
            if cursor is None:
                raise exceptions.ValidationError(
                    {"after": "not a cursor of this sort: pass the next_after of the last page"}
                )
        runs, next_cursor = selectors.run_page(**filters, after=cursor, limit=limit)
        return Response(
            {
                "results": RunSerializer(runs, many=True).data,
                "next_after": next_cursor.encode() if next_cursor else None,
            }
        )
