"""The web console's pages (see the views of each app)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from opsconsole import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
