"""What every console page's chrome needs: the user's role, the kill switch, the queue size,
the paused agents.

The kill switch, the approvals count and the paused agents are read by the apps that own them,
named in ``OPSCONSOLE_CONSOLE_STATE`` (settings), so this lower layer imports no app.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject
from django.utils.module_loading import import_string

from opsconsole import roles


@dataclass(frozen=True)
class ConsoleState:
    role: str | None
    can_view: bool
    can_cancel: bool
    can_decide: bool
    can_admin: bool
    kill_switch: Any  # agents.models.KillSwitch, or None for a visitor without a role
    pending_approvals: int
    # The tools a person degraded, until when (agents.models.ToolBreaker rows).
    degraded_tools: tuple[Any, ...] = ()
    # The paused agents, who paused them, why and when (agents.models.Agent rows).
    paused_agents: tuple[Any, ...] = ()


_ANONYMOUS = ConsoleState(None, False, False, False, False, None, 0)


@cache
def _read(name: str) -> Any:
    return import_string(settings.OPSCONSOLE_CONSOLE_STATE[name])


def console_state(request: HttpRequest) -> ConsoleState:
    """Computed once per request (four small queries) and cached on the request."""
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
            kill_switch=_read("kill_switch")(),
            pending_approvals=_read("pending_approvals")(),
            degraded_tools=tuple(_read("degraded_tools")()),
            paused_agents=tuple(_read("paused_agents")()),
        )
    request._console_state = state  # type: ignore[attr-defined]
    return state


def kill_switch_state() -> Any:
    """The kill switch as the chrome shows it (also for GET /status/ after a reconnect)."""
    return _read("kill_switch")()


def console(request: HttpRequest) -> dict:
    """Context processor (``opsconsole.context_processors.console``); lazy, so fragments pay nothing."""
    return {"console": SimpleLazyObject(lambda: console_state(request))}
