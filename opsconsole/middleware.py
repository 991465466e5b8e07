"""Turns a database outage anywhere into a clear 503 instead of a 500 page."""

from __future__ import annotations

import logging

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from opsconsole.api_errors import UNAVAILABLE

logger = logging.getLogger("opsconsole")


class ControlPlaneUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
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
