"""What every console page's chrome needs: the user's role, the kill switch, the queue size."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from agents.selectors import kill_switch_current
from approvals.models import ApprovalRequest, ApprovalStatus
from opsconsole import roles
from opsconsole.models import KillSwitch


@dataclass(frozen=True)
class ConsoleState:
    role: str | None
    can_view: bool
    can_cancel: bool
    can_decide: bool
    can_admin: bool
    kill_switch: KillSwitch | None
    pending_approvals: int


_ANONYMOUS = ConsoleState(None, False, False, False, False, None, 0)


def console_state(request: HttpRequest) -> ConsoleState:
    """Computed once per request (two small queries) and cached on the request."""
    cached = getattr(request, "_console_state", None)
    if cached is not None:
        return cached
    user = getattr(request, "user", None)
    if user is None or not roles.has_role(user, roles.ONCALL):
        state = _ANONYMOUS
    else:
        state = ConsoleState(
            role=roles.role_of(user),
            can_view=True,
            can_cancel=True,
            can_decide=roles.has_role(user, roles.REVIEWER),
            can_admin=roles.has_role(user, roles.ADMIN),
            kill_switch=kill_switch_current(),
            pending_approvals=ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).count(),
        )
    request._console_state = state  # type: ignore[attr-defined]
    return state


def console(request: HttpRequest) -> dict:
    """Context processor (``opsconsole.context_processors.console``); lazy, so fragments pay nothing."""
    return {"console": SimpleLazyObject(lambda: console_state(request))}
