"""The sign-in lockout holds whatever spelling of the name authenticates, on every sign-in page.

Django's login form strips the username and NFKC-normalises it before looking the user up, so
``"reviewer2 "``, ``" reviewer2"`` and the full-width ``ｒｅｖｉｅｗｅｒ２`` all sign in as
``reviewer2``: the counter must count them as one name. The admin site's sign-in opens a session
the console honours, so it is throttled by the same counter.
"""

from __future__ import annotations

import random

import pytest
from django.test import Client

from opsconsole import login, roles
from tests.conftest import make_person

FULL_WIDTH = "".join(chr(ord(c) + 0xFEE0) for c in "reviewer2")
SPELLINGS = ["reviewer2", "reviewer2 ", " reviewer2", "\u3000reviewer2\t", FULL_WIDTH]
ADMIN_LOGIN = "/django-admin/login/"


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """A window of this test's own, so counts left in a shared cache never meet this test's."""
    now = [900 * random.randint(10**6, 10**7) + 10.0]
    monkeypatch.setattr(login, "_clock", lambda: now[0])
    return now


@pytest.fixture
def reviewer2(settings, db):
    settings.OPSCONSOLE_LOGIN_MAX_FAILURES = 5
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    person = make_person("reviewer2", roles.REVIEWER)
    # Staff, so the admin site's sign-in accepts the person too.
    person.user.is_staff = True
    person.user.save(update_fields=["is_staff"])
    return person


def sign_in(client: Client, username: str, password: str, path: str = "/login/"):
    return client.post(path, {"username": username, "password": password})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("spelling", SPELLINGS[1:], ids=repr)
def test_each_spelling_that_signs_in_does_sign_in_when_not_locked(reviewer2, spelling):
    client = Client()

    response = sign_in(client, spelling, reviewer2.password)

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(reviewer2.user.pk)


@pytest.mark.parametrize("spelling", SPELLINGS, ids=repr)
def test_after_five_failures_no_spelling_of_the_name_signs_in(reviewer2, spelling):
    client = Client()
    for _ in range(5):
        assert sign_in(client, "reviewer2", "wrong").status_code == 200

    response = sign_in(client, spelling, reviewer2.password)

    assert response.status_code == 429
    assert not signed_in(client)


def test_failures_under_different_spellings_count_for_one_name(reviewer2):
    client = Client()
    for spelling in SPELLINGS:
        assert sign_in(client, spelling, "wrong").status_code == 200

    response = sign_in(client, "reviewer2", reviewer2.password)

    assert response.status_code == 429
    assert not signed_in(client)


def test_the_admin_sites_sign_in_is_throttled_by_the_same_counter(reviewer2):
    admin_browser = Client()
    for _ in range(5):
        response = sign_in(admin_browser, "reviewer2", "wrong", ADMIN_LOGIN)
        assert response.status_code == 200
        assert not signed_in(admin_browser)

    locked = sign_in(admin_browser, "reviewer2", reviewer2.password, ADMIN_LOGIN)
    console = sign_in(Client(), " reviewer2", reviewer2.password)

    assert locked.status_code == 429
    assert "Retry-After" in locked
    assert b"Too many failed sign-ins" in locked.content
    assert not signed_in(admin_browser)
    assert console.status_code == 429


def test_failures_on_the_console_lock_the_admin_sites_sign_in(reviewer2):
    for spelling in SPELLINGS:
        sign_in(Client(), spelling, "wrong")
    admin_browser = Client()

    response = sign_in(admin_browser, FULL_WIDTH, reviewer2.password, ADMIN_LOGIN)

    assert response.status_code == 429
    assert not signed_in(admin_browser)


def test_the_admin_sites_sign_in_still_works_and_a_success_clears_the_count(reviewer2):
    browser = Client()
    assert browser.get(ADMIN_LOGIN).status_code == 200
    for _ in range(4):
        sign_in(browser, "reviewer2", "wrong", ADMIN_LOGIN)

    response = sign_in(browser, "reviewer2 ", reviewer2.password, ADMIN_LOGIN)

    assert response.status_code == 302
    assert browser.session["_auth_user_id"] == str(reviewer2.user.pk)
    browser.logout()
    for _ in range(4):
        assert sign_in(browser, "reviewer2", "wrong", ADMIN_LOGIN).status_code == 200
    assert sign_in(browser, "reviewer2", reviewer2.password, ADMIN_LOGIN).status_code == 302
