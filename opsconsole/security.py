"""A strict Content-Security-Policy on every response (Django 5.2 has no built-in CSP).

Enable it with ``"opsconsole.security.ContentSecurityPolicyMiddleware"`` in ``MIDDLEWARE`` (right
after ``SecurityMiddleware``). With it, pages may load scripts, styles and images only from the
console itself: no inline ``<script>``, no ``style="..."`` attributes, no ``<style>`` blocks, no
``on*=`` handlers, no CDN. Live updates connect back over ``ws:``/``wss:``.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

DEFAULT_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self' ws: wss:",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ]
)


class ContentSecurityPolicyMiddleware:
    """Adds ``Content-Security-Policy`` (``settings.OPSCONSOLE_CSP``, else the strict default)
    unless the view set one itself."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.policy = getattr(settings, "OPSCONSOLE_CSP", DEFAULT_POLICY)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.policy)
        return response
