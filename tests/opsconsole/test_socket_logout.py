"""A console socket ends with the session that opened it: at logout at once, and when the
session is gone or its person disabled by any other way, at the next event it would carry."""

from __future__ import annotations

from importlib import import_module

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from agents.policy.services import kill_switch_set
from opsconsole import consumers
from opsconsole.routing import websocket_urlpatterns

# The same stack as opsconsole/asgi.py, without importing it (it may start the scheduler).
application = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

pytestmark = pytest.mark.django_db(transaction=True)

CLOSE_SESSION_ENDED = 4401


@database_sync_to_async
def browser_of(user) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


async def open_socket(browser: Client, topics: str = "runs,killswitch") -> WebsocketCommunicator:
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    socket = WebsocketCommunicator(
        application,
        f"/ws/live/?topics={topics}",
        headers=[(b"origin", b"http://localhost"), (b"cookie", cookie)],
    )
    connected, _ = await socket.connect()
    assert connected
    hello = await socket.receive_json_from(timeout=2)
    assert hello["event"] == "hello"
    return socket


async def flip_kill_switch(mode: str = "disable_writes") -> None:
    await database_sync_to_async(kill_switch_set)(mode=mode, reason="drill", actor="user:ada")


async def closed_with(socket: WebsocketCommunicator) -> int | None:
    """The close code the socket ends with next (None if it sends an event instead)."""
    message = await socket.receive_output(timeout=2)
    if message["type"] == "websocket.close":
        return message.get("code")
    return None


async def test_logging_out_closes_that_sessions_socket_and_it_hears_nothing_more(oncall):
    browser = await browser_of(oncall.user)
    socket = await open_socket(browser)

    response = await sync_to_async(browser.post)("/logout/")

    assert response.status_code == 302
    assert await closed_with(socket) == CLOSE_SESSION_ENDED
    await flip_kill_switch()
    assert await socket.receive_nothing(timeout=0.5)


async def test_logging_out_leaves_the_persons_other_sessions_open(oncall):
    laptop, phone = await browser_of(oncall.user), await browser_of(oncall.user)
    on_laptop, on_phone = await open_socket(laptop), await open_socket(phone)

    await sync_to_async(laptop.post)("/logout/")

    assert await closed_with(on_laptop) == CLOSE_SESSION_ENDED
    await flip_kill_switch()
    changed = await on_phone.receive_json_from(timeout=2)
    assert changed["event"] == "killswitch.changed"
    await on_phone.disconnect()


@pytest.fixture
def recheck_every_event(monkeypatch):
    # raising=False: the setting's absence is the bug this pins, not a reason to error.
    monkeypatch.setattr(consumers, "SESSION_RECHECK_SECONDS", 0, raising=False)


async def test_a_session_removed_without_logout_closes_the_socket_at_the_next_event(
    oncall, recheck_every_event
):
    browser = await browser_of(oncall.user)
    socket = await open_socket(browser)
    store = import_module(settings.SESSION_ENGINE).SessionStore
    await database_sync_to_async(store(browser.cookies["sessionid"].value).delete)()

    await flip_kill_switch()

    assert await closed_with(socket) == CLOSE_SESSION_ENDED


async def test_a_disabled_person_loses_the_socket_at_the_next_event(oncall, recheck_every_event):
    browser = await browser_of(oncall.user)
    socket = await open_socket(browser)
    await database_sync_to_async(
        lambda: User.objects.filter(pk=oncall.user.pk).update(is_active=False)
    )()

    await flip_kill_switch()

    assert await closed_with(socket) == CLOSE_SESSION_ENDED


async def test_a_changed_password_ends_the_other_sessions_sockets(oncall, recheck_every_event):
    browser = await browser_of(oncall.user)
    socket = await open_socket(browser)

    def change_password() -> None:
        user = User.objects.get(pk=oncall.user.pk)
        user.set_password("a-brand-new-Secret-2")
        user.save()

    await database_sync_to_async(change_password)()
    await flip_kill_switch()

    assert await closed_with(socket) == CLOSE_SESSION_ENDED


async def test_a_live_session_keeps_its_socket_and_hears_events(oncall, recheck_every_event):
    browser = await browser_of(oncall.user)
    socket = await open_socket(browser)

    await flip_kill_switch()

    changed = await socket.receive_json_from(timeout=2)
    assert changed["event"] == "killswitch.changed"
    await socket.disconnect()
