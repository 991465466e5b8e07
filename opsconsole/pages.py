"""Small helpers every console page shares: a missing row is the 404 page, a service error is
a message, a query-string number is an int or nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.http import Http404

from opsconsole.errors import NotFound, ServiceError

T = TypeVar("T")


def or_404(read: Callable[..., T], /, **kwargs: Any) -> T:
    """A selector's answer, or the console's 404 page when it raises ``NotFound``."""
    try:
        return read(**kwargs)
    except NotFound as error:
        raise not_found(error) from None


def not_found(error: NotFound) -> Http404:
    """For a service call's ``except NotFound`` (``raise not_found(error) from None``)."""
    return Http404(str(error.detail))


def error_message(error: ServiceError) -> str:
    """A service error as one line for a form or a message (a list of problems is joined)."""
    if isinstance(error.detail, list):
        return "; ".join(str(item) for item in error.detail)
    return str(error.detail)


def int_or_none(raw: str | None) -> int | None:
    """A page or cursor number from the query string; anything else is no number."""
    try:
        return int(raw) if raw else None
    except ValueError:
        return None
