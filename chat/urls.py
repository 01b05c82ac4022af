"""The HTML pages; the JSON API lives in `chat/api_urls.py`, websockets in `chat/routing.py`."""

from __future__ import annotations

from django.urls import URLPattern, path

from chat import token_views, views

app_name = "chat"

urlpatterns: list[URLPattern] = [
    path("", views.index, name="index"),
    path("new/", views.new, name="new"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("settings/tokens/", token_views.tokens, name="tokens"),
    path("settings/tokens/<int:token_id>/revoke/", token_views.revoke, name="revoke_token"),
    path("favicon.ico", views.favicon, name="favicon"),
]
