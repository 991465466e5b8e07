"""The web login, throttled: repeated failed sign-ins lock the username (and the address) out.

A small cache-based counter instead of a package such as django-axes: failures are counted per
username and per client address in fixed windows of ``OPSCONSOLE_LOGIN_WINDOW_SECONDS``. Once a
username has ``OPSCONSOLE_LOGIN_MAX_FAILURES`` failures in the window (or an address four times as
many, which catches one client trying many usernames), every further attempt is refused with 429
and ``Retry-After`` without checking the password, so guessing gains nothing. A success clears the
username's counter. Unlike the API's rate limits this one fails closed only as far as the
counter goes: if the cache is down, attempts are not counted (logged), and passwords still have
to be right.

The counter keys on the name as authentication sees it: Django's login form strips the username
and NFKC-normalises it (``UsernameField``), so ``" reviewer2"`` and the full-width
``ｒｅｖｉｅｗｅｒ２`` sign in as ``reviewer2`` and must count as ``reviewer2``; it is case-folded
too, so a case-insensitive database collation gains nothing either. Every sign-in page goes
through the throttle: the admin site's own (``ThrottledAdminLoginView``, wired in
``opsconsole/urls.py``) opens a session the console honours.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME, get_user_model
from django.contrib.auth.forms import UsernameField
from django.contrib.auth.views import LoginView
from django.core.cache import caches
from django.db import connection
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext

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


def username_key(posted: str) -> str:
    """The name a sign-in attempt is counted against: the posted username cleaned exactly as the
    login form cleans it before authenticating (stripped, NFKC up to the field's length, as
    ``AuthenticationForm`` sets it), then case-folded."""
    user_model = get_user_model()
    max_length = user_model._meta.get_field(user_model.USERNAME_FIELD).max_length or 254
    return UsernameField(max_length=max_length).to_python(posted).casefold()


def client_address(request: HttpRequest) -> str:
    # REMOTE_ADDR is the proxy's address behind a reverse proxy; deployments that terminate TLS
    # in front should pass the client address through (e.g. uvicorn --proxy-headers).
    return request.META.get("REMOTE_ADDR", "")


class LoginThrottle:
    """The lockout, for a ``LoginView``: refuse while locked, count failures, clear on success."""

    request: HttpRequest

    def _keys(self, request: HttpRequest) -> tuple[str, str, int]:
        window, _ = _window()
        return (
            _key("user", username_key(request.POST.get("username", "")), window),
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
                username_key(request.POST.get("username", "")),
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
        # The right password of someone the page turns away (the admin site's sign-in refuses
        # people who are not staff) guesses nothing, and is not counted.
        if form.get_user() is None:
            self._count_failure(self.request)
        return super().form_invalid(form)

    def form_valid(self, form) -> HttpResponse:
        user_key, _, _ = self._keys(self.request)
        try:
            caches["default"].delete(user_key)
        except Exception as exc:  # noqa: BLE001
            logger.warning("login counter not cleared: %s", exc)
        return super().form_valid(form)


class ThrottledLoginView(LoginThrottle, LoginView):
    redirect_authenticated_user = True


class ThrottledAdminLoginView(LoginThrottle, LoginView):
    """The admin site's sign-in, as ``admin.site.login`` serves it (its form, template and
    context), behind the same throttle and counter as the console's."""

    authentication_form = AdminAuthenticationForm
    template_name = "admin/login.html"

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        request.current_app = admin.site.name
        if request.method == "GET" and admin.site.has_permission(request):
            return HttpResponseRedirect(reverse("admin:index", current_app=admin.site.name))
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(
            admin.site.each_context(self.request),
            title=gettext("Log in"),
            subtitle=None,
            app_path=self.request.get_full_path(),
            username=self.request.user.get_username(),
        )
        if (
            REDIRECT_FIELD_NAME not in self.request.GET
            and REDIRECT_FIELD_NAME not in self.request.POST
        ):
            context[REDIRECT_FIELD_NAME] = reverse("admin:index", current_app=admin.site.name)
        return context
