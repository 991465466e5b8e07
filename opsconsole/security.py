"""A strict Content-Security-Policy on every response (Django 5.2 has no built-in CSP).

Enable it with ``"opsconsole.security.ContentSecurityPolicyMiddleware"`` in ``MIDDLEWARE`` (right
after ``SecurityMiddleware``). With it, pages may load scripts, styles and images only from the
console itself: no inline ``<script>``, no ``style="..."`` attributes, no ``<style>`` blocks, no
``on*=`` handlers, no CDN. Live updates connect back over ``ws:``/``wss:``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from opsconsole.middleware import DualModeMiddleware

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


class ContentSecurityPolicyMiddleware(DualModeMiddleware):
    """Adds ``Content-Security-Policy`` (``settings.OPSCONSOLE_CSP``, else the strict default)
    unless the view set one itself. Sync or async, as the chain runs."""

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        self.policy = getattr(settings, "OPSCONSOLE_CSP", DEFAULT_POLICY)

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response.headers.setdefault("Content-Security-Policy", self.policy)
        return response
