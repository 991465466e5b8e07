"""Cross-cutting pages: the overview and the health check."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from agents.selectors import kill_switch_current


@login_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "overview.html", {"kill_switch": kill_switch_current()})


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
