"""Browsers find the console's icon: linked from every page and at /favicon.ico."""

from __future__ import annotations

from django.templatetags.static import static

from tests.conftest import logged_in


def test_favicon_ico_leads_to_the_svg_icon(client):
    response = client.get("/favicon.ico", follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(static("favicon.svg"), 301)]
    assert response["Content-Type"] == "image/svg+xml"


def test_every_page_links_the_icon(oncall):
    page = logged_in(oncall).get("/").content.decode()

    assert f'<link rel="icon" href="{static("favicon.svg")}" type="image/svg+xml">' in page
