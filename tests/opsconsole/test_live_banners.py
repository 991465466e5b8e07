"""The paused-agents and degraded-tools banners update live on every console page, as the
kill-switch banner does: pausing, resuming, degrading and restoring broadcast on the
``killswitch`` group (every page follows it, templates/base.html), and the page re-fetches the
banners from ``console_banners`` (also after a reconnect)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse

from agents.registry.services import agent_pause, agent_resume
from agents.tools.services import tool_degrade, tool_restore
from tests.conftest import logged_in
from tests.opsconsole.test_consumers import next_event, open_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def test_pausing_and_resuming_an_agent_reach_every_page(oncall, agent):
    page, connected, _ = await open_socket(oncall, "killswitch")
    assert connected
    await next_event(page, "hello")

    await sync_to_async(agent_pause)(agent=agent.agent, actor="olivia", by="olivia", reason="loop")
    changed = await next_event(page, "agents.paused_changed")
    assert changed == {"name": agent.agent.name, "paused": True}

    await sync_to_async(agent_resume)(agent=agent.agent, actor="olivia", by="olivia")
    changed = await next_event(page, "agents.paused_changed")
    assert changed == {"name": agent.agent.name, "paused": False}
    await page.disconnect()


async def test_degrading_and_restoring_a_tool_reach_every_page(oncall):
    page, connected, _ = await open_socket(oncall, "killswitch")
    assert connected
    await next_event(page, "hello")

    await sync_to_async(tool_degrade)(tool="kb.read", minutes=5, reason="vendor", actor="olivia")
    changed = await next_event(page, "tools.degraded_changed")
    assert changed == {"tool": "kb.read", "degraded": True}

    await sync_to_async(tool_restore)(tool="kb.read", actor="olivia")
    changed = await next_event(page, "tools.degraded_changed")
    assert changed == {"tool": "kb.read", "degraded": False}
    await page.disconnect()


def test_every_page_re_fetches_the_banners_on_these_events(oncall):
    html = logged_in(oncall).get(reverse("overview")).content.decode()
    assert 'data-live-topics="killswitch' in html
    assert f'hx-get="{reverse("console_banners")}"' in html
    assert 'data-live-refresh="agents.paused_changed tools.degraded_changed"' in html


def test_the_banner_fragment_shows_the_current_banners_to_on_call(oncall, outsider, agent):
    browser = logged_in(oncall)
    url = reverse("console_banners")
    quiet = browser.get(url)
    assert quiet.status_code == 200
    assert "paused-agents-banner" not in quiet.content.decode()
    assert "degraded-tools-banner" not in quiet.content.decode()
    assert "<html" not in quiet.content.decode()

    agent_pause(agent=agent.agent, actor="olivia", by="olivia", reason="runaway loop")
    tool_degrade(tool="kb.read", minutes=15, reason="vendor outage", actor="olivia")
    html = browser.get(url).content.decode()
    assert "paused-agents-banner" in html and "runaway loop" in html
    assert "degraded-tools-banner" in html and "vendor outage" in html

    assert logged_in(outsider).get(url).status_code == 403
    anonymous = Client().get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("login"))
