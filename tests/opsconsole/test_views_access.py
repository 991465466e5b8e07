"""Who may see and do what in the web console, checked on the server for every page and action."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from agents.models import KillSwitch
from tests.conftest import logged_in

# Pages every role (on-call and up) may open.
ONCALL_PAGES = [
    "overview",
    "runs:list",
    "approvals:queue",
    "approvals:history",
    "approvals:badge",
    "kill_switch",
    "policy:current",
    "policy:versions",
    "policy:export",
    "audit",
]
ADMIN_PAGES = ["agents:list", "policy:edit", "policy:tool_new", "policy:budgets"]


@pytest.mark.parametrize("page", ONCALL_PAGES + ADMIN_PAGES)
def test_anonymous_people_are_sent_to_the_login_page(db, page):
    response = Client().get(reverse(page))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("page", ONCALL_PAGES + ADMIN_PAGES)
def test_people_without_a_role_are_refused_every_page(outsider, page):
    response = logged_in(outsider).get(reverse(page))
    assert response.status_code == 403
    assert b"no console role" in response.content


@pytest.mark.parametrize("page", ONCALL_PAGES)
@pytest.mark.parametrize("persona", ["oncall", "reviewer", "admin"])
def test_every_role_sees_the_pages_for_on_call(db, request, page, persona):
    response = logged_in(request.getfixturevalue(persona)).get(reverse(page))
    assert response.status_code == 200


@pytest.mark.parametrize("page", ADMIN_PAGES)
@pytest.mark.parametrize("persona", ["oncall", "reviewer"])
def test_admin_pages_are_refused_to_on_call_and_reviewers(db, request, page, persona):
    response = logged_in(request.getfixturevalue(persona)).get(reverse(page))
    assert response.status_code == 403


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_admins_open_the_admin_pages(admin, page):
    assert logged_in(admin).get(reverse(page)).status_code == 200


def test_an_htmx_request_without_a_session_is_redirected_by_header_not_swapped(db):
    response = Client().get(reverse("runs:list"), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response["HX-Redirect"].startswith(reverse("login"))


@pytest.mark.parametrize("page", ["overview", "runs:list", "audit", "approvals:queue"])
def test_read_only_pages_refuse_post(oncall, page):
    assert logged_in(oncall).post(reverse(page)).status_code == 405


def test_login_and_logout_with_the_real_forms(oncall):
    client = Client(enforce_csrf_checks=True)
    page = client.get(reverse("login"))
    token = page.cookies["csrftoken"].value
    response = client.post(
        reverse("login"),
        {
            "username": oncall.user.username,
            "password": oncall.password,
            "csrfmiddlewaretoken": token,
        },
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("overview")
    assert client.get(reverse("overview")).status_code == 200
    # Logging out needs a POST with the CSRF token, not a link anyone can embed.
    token = client.cookies["csrftoken"].value
    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert client.get(reverse("overview")).status_code == 302


def test_a_wrong_password_does_not_log_in(oncall):
    client = Client()
    response = client.post(
        reverse("login"), {"username": oncall.user.username, "password": "wrong"}
    )
    assert response.status_code == 200
    assert b"enter a correct username and password" in response.content.lower()
    assert client.get(reverse("overview")).status_code == 302


def test_a_post_without_csrf_token_is_refused(admin):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin.user)
    response = client.post(reverse("kill_switch"), {"mode": "stop_all", "reason": "x"})
    assert response.status_code == 403
    assert KillSwitch.objects.get(pk=1).mode == "off"


def test_the_navigation_offers_agents_only_to_admins(oncall, admin):
    assert reverse("agents:list").encode() not in logged_in(oncall).get(reverse("overview")).content
    assert reverse("agents:list").encode() in logged_in(admin).get(reverse("overview")).content


def test_the_kill_switch_banner_shows_on_every_page_while_it_is_on(oncall, admin):
    from agents.policy.services import kill_switch_set

    client = logged_in(oncall)
    page = client.get(reverse("runs:list")).content.decode()
    assert 'id="killswitch-banner" class="banner" role="alert" hidden' in page
    kill_switch_set(mode="disable_writes", reason="vendor outage", actor="user:ada-admin")
    for name in ["overview", "runs:list", "approvals:queue", "audit", "policy:current"]:
        page = client.get(reverse(name)).content.decode()
        assert 'id="killswitch-banner" class="banner" role="alert">' in page, name
        assert "vendor outage" in page


def test_pages_carry_no_inline_styles_or_handlers_so_a_strict_csp_holds(admin, agent, start_run):
    import re

    run = start_run()
    agent.api.post_json(f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {}})
    client = logged_in(admin)
    pages = [reverse(name) for name in ONCALL_PAGES + ADMIN_PAGES if name != "policy:export"]
    pages += [
        reverse("runs:detail", args=[run["id"]]),
        reverse("agents:detail", args=["support-bot"]),
        reverse("policy:version", args=[1]),
    ]
    for url in pages:
        html = client.get(url).content.decode()
        assert not re.search(r"\sstyle=", html), url
        assert not re.search(r"\son[a-z]+=", html), url
        assert "<script>" not in html, url
