"""Turns a database outage anywhere into a clear 503, and refuses oversized API bodies with 413;
serves static files (WhiteNoise) without splitting the middleware chain.

Every middleware here works in both modes (``sync_capable`` and ``async_capable``). One sync-only
middleware makes Django run everything below it in a thread and block that thread for the whole
request: an async view (the agents' long poll, waiting up to 30 s for a reviewer) then held a
thread for all of its wait, and every request paid extra switches between the event loop and
the thread.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from whitenoise.middleware import WhiteNoiseMiddleware

from opsconsole.api_errors import NOT_FOUND, TOO_LARGE, UNAVAILABLE

logger = logging.getLogger("opsconsole")


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class DualModeMiddleware:
    """A middleware that runs in the mode of the chain it is part of (sync or async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        early = self.before(request)
        if early is not None:
            return early
        return self.after(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        early = self.before(request)
        if early is not None:
            return early
        return self.after(request, await self.get_response(request))

    def before(self, request: HttpRequest) -> HttpResponse | None:
        """An answer without calling the rest of the chain, or None (no I/O here)."""
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response


class ControlPlaneUnavailableMiddleware(DualModeMiddleware):
    def before(self, request: HttpRequest) -> HttpResponse | None:
        if (
            request.path.startswith("/api/")
            and _declared_length(request) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        ):
            # Refused before the body is read, so a huge upload costs nothing.
            return JsonResponse(TOO_LARGE, status=413)
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
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


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise (static files, compressed and cached forever), in the chain's own mode.

    WhiteNoise's middleware is sync-only; here a request that is not for a static file goes
    straight on in async mode, and a static file is read in a thread (it touches the disk)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any = None, settings: Any = settings) -> None:
        super().__init__(get_response, settings=settings)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if self.autorefresh:  # DEBUG: looked up on disk
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
