"""One error shape for the whole API: ``{"error": "<code>", "detail": ...}``."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from opsconsole.errors import ServiceError

logger = logging.getLogger("opsconsole.api")


def error_body(code: str, detail: Any, **extra: Any) -> dict[str, Any]:
    """The API's one error shape; ``extra`` carries a code's own fields (``stop_reason``...)."""
    return {"error": code, "detail": detail, **extra}


def error_response(
    code: str, detail: Any, status_code: int, headers: dict[str, str] | None = None
) -> JsonResponse:
    """The error shape outside DRF (middleware, async views)."""
    return JsonResponse(error_body(code, detail), status=status_code, headers=headers)


UNAVAILABLE = error_body(
    "control_plane_unavailable", "The control plane cannot decide right now; treat this as a stop."
)
TOO_LARGE = error_body("payload_too_large", "The request body is larger than the server accepts.")
NOT_FOUND = error_body("not_found", "No such API resource.")

_DRF_CODES = {
    exceptions.ParseError: "malformed",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "malformed",
}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.code, exc.detail, **exc.extra), status=exc.status)
    if isinstance(exc, RequestDataTooBig):
        return Response(TOO_LARGE, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, OperationalError | InterfaceError | DatabaseError):
        logger.warning("control plane unavailable: %s", exc)
        return Response(UNAVAILABLE, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, exceptions.APIException):
        code = next((c for t, c in _DRF_CODES.items() if isinstance(exc, t)), "error")
        headers = {}
        if isinstance(exc, exceptions.AuthenticationFailed | exceptions.NotAuthenticated):
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
            exc.status_code = status.HTTP_401_UNAUTHORIZED
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        return Response(error_body(code, exc.detail), status=exc.status_code, headers=headers)
    return None
