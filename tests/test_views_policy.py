"""The policy editor's dry run: what a draft would have done to recent runs, before saving."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import PolicyVersion

pytestmark = pytest.mark.django_db


def test_a_dry_run_shows_which_recent_runs_a_draft_would_stop_and_saves_nothing(
    client, admin, agent, start_run
):
    run = start_run()
    agent.api.post_json(
        f"/api/v1/runs/{run['id']}/tool-calls", {"tool": "kb.read", "args": {"q": 1}}
    )
    agent.api.post_json(f"/api/v1/runs/{run['id']}/finish", {"status": "succeeded"})
    versions = PolicyVersion.objects.count()
    client.force_login(admin.user)

    response = client.post(
        reverse("policy:edit"), {"yaml": 'tools:\n  allow: ["search.read"]\n', "preview": "1"}
    )

    assert response.status_code == 200
    body = response.content.decode()
    assert "would have stopped <strong>1</strong> of the last 1 runs" in body
    assert "tool_denied:kb.read" in body
    assert PolicyVersion.objects.count() == versions


def test_a_dry_run_of_an_invalid_draft_shows_the_errors(client, admin):
    client.force_login(admin.user)
    response = client.post(reverse("policy:edit"), {"yaml": "tools: [1", "preview": "1"})
    assert response.status_code == 422
    assert "not valid YAML" in response.content.decode()
