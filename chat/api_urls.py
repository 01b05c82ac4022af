"""Routes of the JSON API, mounted under /api/ (DESIGN.md section 4)."""

from __future__ import annotations

from django.urls import URLPattern, path

from chat import api

app_name = "api"

urlpatterns: list[URLPattern] = [
    path("conversations/", api.conversations_view, name="conversations"),
    path("conversations/<uuid:conversation_id>/", api.conversation_view, name="conversation"),
    path("models/", api.models_view, name="models"),
]
