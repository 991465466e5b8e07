"""Access checks for the web console's views: every page needs a login and a role."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_htmx.http import HttpResponseClientRedirect

from opsconsole import roles


def role_required(role: str) -> Callable:
    """Anonymous people go to the login page; logged-in people without ``role`` get a 403.

    The check happens here, on the server, for every request: a hidden button is not a
    permission. htmx requests are redirected with ``HX-Redirect`` so a fragment never swaps a
    login form into the middle of a page.
    """
    if role not in roles.ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.is_authenticated:
                if getattr(request, "htmx", False):
                    return HttpResponseClientRedirect(
                        redirect_to_login(request.get_full_path())["Location"]
                    )
                return redirect_to_login(request.get_full_path())
            if not roles.has_role(request.user, role):
                return render(request, "403.html", {"required_role": role}, status=403)
            return view(request, *args, **kwargs)

        wrapper.required_role = role  # type: ignore[attr-defined]
        return wrapper

    return decorator
