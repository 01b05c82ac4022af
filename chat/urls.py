"""The HTML pages; the JSON API lives in `chat/api_urls.py`, websockets in `chat/routing.py`."""

from __future__ import annotations

from django.urls import URLPattern, path

from chat import views

app_name = "chat"

urlpatterns: list[URLPattern] = [
    path("", views.index, name="index"),
    path("new/", views.new, name="new"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
]
