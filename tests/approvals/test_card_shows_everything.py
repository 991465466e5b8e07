"""An approval card shows everything being approved: every key, however long one value is, and
every invisible or direction-changing character as an escape a reviewer can read."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from approvals.models import ApprovalRequest

POLICY = """
tools:
  allow: ["kb.read", "email.send"]
writes: {require_approval: true, timeout_seconds: 900}
"""

# Characters that change how a line reads without showing themselves.
HIDDEN = {
    "\u202e": r"\u202e",  # right-to-left override
    "\u202a": r"\u202a",  # left-to-right embedding
    "\u2066": r"\u2066",  # left-to-right isolate
    "\u2069": r"\u2069",  # pop directional isolate
    "\u200f": r"\u200f",  # right-to-left mark
    "\u200b": r"\u200b",  # zero-width space
    "\u200d": r"\u200d",  # zero-width joiner
    "\ufeff": r"\ufeff",  # byte order mark
    "\u2060": r"\u2060",  # word joiner (another format character)
    "\u0085": r"\u0085",  # next line (a C1 control)
}


@pytest.fixture
def ask(agent, start_run, publish_policy):
    """Ask for an ``email.send`` that waits for a reviewer; returns the request."""
    publish_policy(POLICY)

    def ask(args: dict, task: str = "reply to a customer") -> ApprovalRequest:
        run = start_run(task=task)
        answer = agent.api.post_json(
            f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "email.send", "args": args}
        ).json()
        assert answer["decision"] == "pending_approval", answer
        return ApprovalRequest.objects.get(tool_call_id=answer["id"])

    return ask


def pages_showing(person, request: ApprovalRequest) -> dict[str, str]:
    """Every page a reviewer may approve from or check the request on."""
    client = Client()
    client.force_login(person.user)
    pages = {}
    for name, url in (
        ("queue", reverse("approvals:queue")),
        ("card", reverse("approvals:card", args=[request.pk])),
        ("run", reverse("runs:detail", args=[request.run_id])),
    ):
        response = client.get(url)
        assert response.status_code == 200, name
        pages[name] = response.content.decode()
    return pages


def test_a_25_kB_body_does_not_hide_the_recipient(reviewer, ask):
    body = "Dear customer, " + "refund details " * 1700 + "THE-END"
    assert len(body) > 25_000
    request = ask({"body": body, "to": "mallory@evil.example"})

    for name, page in pages_showing(reviewer, request).items():
        assert "mallory@evil.example" in page, name
        # The long value is there, its beginning shown and how much is folded away said.
        assert "Dear customer, refund details" in page, name
        assert re.search(r"[\d,]+ more characters", page), name
        assert f"{len(body) - 200:,} more characters" in page, name
        # Folded, not cut: the whole value can be unfolded.
        assert "THE-END" in page, name


def test_every_key_is_shown_when_many_values_are_long(reviewer, ask):
    args = {f"part{i}": chr(ord("a") + i) * 5_000 for i in range(9)}
    args["zz_to"] = "mallory@evil.example"
    args["nested"] = {"attachment": "x" * 10_000, "cc": "eve@evil.example"}
    request = ask(args)

    page = pages_showing(reviewer, request)["card"]

    for key in [*args, "attachment", "cc"]:
        assert f"&quot;{key}&quot;:" in page, key
    assert "mallory@evil.example" in page
    assert "eve@evil.example" in page
    assert page.count("4,800 more characters") == 9


def test_direction_and_invisible_characters_are_shown_as_escapes(reviewer, ask):
    hidden = "".join(HIDDEN)
    request = ask(
        {"to": "ann@example.com\u202egpj.exe", "body": f"Refund {hidden} issued\n\tThanks"},
        task="reply \u202eto\u202c the customer\u200b",
    )

    for name, page in pages_showing(reviewer, request).items():
        for character, escape in HIDDEN.items():
            assert character not in page, (name, escape)
            assert escape in page, (name, escape)
        assert r"ann@example.com\u202egpj.exe" in page, name
        assert r"reply \u202eto\u202c the customer\u200b" in page, name


def test_a_long_value_with_hidden_characters_shows_them_escaped_in_both_parts(reviewer, ask):
    body = "\u202e" + "a" * 500 + "\u2067" + "b" * 500
    request = ask({"body": body, "to": "ann@example.com"})

    page = pages_showing(reviewer, request)["card"]

    assert "\u202e" not in page and "\u2067" not in page
    assert r"\u202e" in page and r"\u2067" in page
