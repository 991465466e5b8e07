"""The web login, throttled: repeated failed sign-ins lock the username (and the address) out.

A small cache-based counter instead of a package such as django-axes: failures are counted per
username and per client address in fixed windows of ``OPSCONSOLE_LOGIN_WINDOW_SECONDS``. Once a
username has ``OPSCONSOLE_LOGIN_MAX_FAILURES`` failures in the window (or an address four times as
many, which catches one client trying many usernames), every further attempt is refused with 429
and ``Retry-After`` without checking the password, so guessing gains nothing. A success clears the
username's counter. Unlike the API's rate limits this one fails closed only as far as the
counter goes: if the cache is down, attempts are not counted (logged), and passwords still have
to be right.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import caches
from django.db import connection
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse

# The wall clock, a seam for tests (windows are aligned on it).
_clock = time.time

logger = logging.getLogger("opsconsole.login")

ADDRESS_FACTOR = 4


def _window() -> tuple[int, float]:
    period = settings.OPSCONSOLE_LOGIN_WINDOW_SECONDS
    now = _clock()
    window = int(now // period)
    return window, (window + 1) * period - now


def _key(kind: str, value: str, window: int) -> str:
    digest = hashlib.sha256(value.lower().encode()).hexdigest()[:32]
    return f"login:{connection.settings_dict.get('NAME', '')}:{kind}:{digest}:{window}"


def client_address(request: HttpRequest) -> str:
    # REMOTE_ADDR is the proxy's address behind a reverse proxy; deployments that terminate TLS
    # in front should pass the client address through (e.g. uvicorn --proxy-headers).
    return request.META.get("REMOTE_ADDR", "")


class ThrottledLoginView(LoginView):
    redirect_authenticated_user = True

    def _keys(self, request: HttpRequest) -> tuple[str, str, int]:
        window, _ = _window()
        username = request.POST.get("username", "")
        return (
            _key("user", username, window),
            _key("addr", client_address(request), window),
            window,
        )

    def _locked(self, request: HttpRequest) -> bool:
        user_key, address_key, _ = self._keys(request)
        limit = settings.OPSCONSOLE_LOGIN_MAX_FAILURES
        try:
            counts = caches["default"].get_many([user_key, address_key])
        except Exception as exc:  # noqa: BLE001 - a dead cache must not lock everyone out
            logger.warning("login throttling unavailable: %s", exc)
            return False
        return (
            counts.get(user_key, 0) >= limit or counts.get(address_key, 0) >= limit * ADDRESS_FACTOR
        )

    def _count_failure(self, request: HttpRequest) -> None:
        user_key, address_key, _ = self._keys(request)
        cache = caches["default"]
        timeout = settings.OPSCONSOLE_LOGIN_WINDOW_SECONDS + 1
        try:
            for key in (user_key, address_key):
                cache.add(key, 0, timeout=timeout)
                cache.incr(key)
        except Exception as exc:  # noqa: BLE001
            logger.warning("login failure not counted: %s", exc)

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if self._locked(request):
            _, seconds_left = _window()
            logger.warning(
                "login locked out for %r from %s",
                request.POST.get("username", ""),
                client_address(request),
            )
            form = self.get_form()
            # Not validated: validating would check the password, which a locked-out attempt
            # must not learn anything from.
            form.cleaned_data, form._errors = {}, ErrorDict()
            minutes = max(1, math.ceil(seconds_left / 60))
            form.add_error(
                None,
                f"Too many failed sign-ins. Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
            )
            response = self.render_to_response(self.get_context_data(form=form))
            response.status_code = 429
            response["Retry-After"] = str(max(1, math.ceil(seconds_left)))
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form) -> HttpResponse:
        self._count_failure(self.request)
        return super().form_invalid(form)

    def form_valid(self, form) -> HttpResponse:
        user_key, _, _ = self._keys(self.request)
        try:
            caches["default"].delete(user_key)
        except Exception as exc:  # noqa: BLE001
            logger.warning("login counter not cleared: %s", exc)
        return super().form_valid(form)
