"""Turns a database outage anywhere into a clear 503, and refuses oversized API bodies with 413."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from opsconsole.api_errors import NOT_FOUND, TOO_LARGE, UNAVAILABLE

logger = logging.getLogger("opsconsole")


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class ControlPlaneUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.path.startswith("/api/")
            and _declared_length(request) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        ):
            # Refused before the body is read, so a huge upload costs nothing.
            return JsonResponse(TOO_LARGE, status=413)
        response = self.get_response(request)
        if (
            response.status_code == 404
            and request.path.startswith("/api/")
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            # A URL no API route matches (e.g. /api/v1/runs/-1) gets the API's error shape.
            return JsonResponse(NOT_FOUND, status=404)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, OverflowError) and request.path.startswith("/api/"):
            # An id past the database's integer range (SQLite raises OverflowError): no such row.
            return JsonResponse(NOT_FOUND, status=404)
        if not isinstance(exception, OperationalError | InterfaceError | DatabaseError):
            return None
        logger.warning("database unavailable: %s", exception)
        if request.path.startswith("/api/"):
            return JsonResponse(UNAVAILABLE, status=503)
        return HttpResponse(
            "The console cannot reach its database right now. Nothing was changed; retry shortly.",
            status=503,
            content_type="text/plain",
        )
