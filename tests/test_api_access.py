"""Who may use each API route, and the JSON errors of every route: anonymous, a bad or
revoked token, another user's conversation, CSRF, methods and paths that are no route."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.test import AsyncClient, Client
from django.urls import resolve

from chat import chats
from chat.models import Conversation, Message
from tests.api_client import LIST_URL, MODELS_URL, SSE, EventReader, token_headers, url
from tests.llm_server import expected_text

# (method, path with {id} for a conversation's id, JSON body or None)
ROUTES = [
    ("get", LIST_URL, None),
    ("post", LIST_URL, {}),
    ("get", "/api/conversations/{id}/", None),
    ("patch", "/api/conversations/{id}/", {"title": "x"}),
    ("delete", "/api/conversations/{id}/", None),
    ("post", "/api/conversations/{id}/messages/", {"content": "hi"}),
    ("get", "/api/conversations/{id}/events/", None),
    ("post", "/api/conversations/{id}/stop/", None),
    ("post", "/api/conversations/{id}/regenerate/", None),
    ("post", "/api/conversations/{id}/continue/", None),
    ("get", "/api/conversations/{id}/export/", None),
    ("get", MODELS_URL, None),
]
CONVERSATION_ROUTES = [route for route in ROUTES if "{id}" in route[1]]
UNSAFE_ROUTES = [route for route in ROUTES if route[0] != "get"]


def route_id(route: tuple[str, str, Any]) -> str:
    return f"{route[0].upper()} {route[1]}"


def call(
    client: Client, route: tuple[str, str, Any], conversation_id: Any = None, **headers: str
) -> Any:
    method, path, body = route
    path = path.format(id=conversation_id or uuid.uuid4())
    data = json.dumps(body) if body is not None else ""
    return getattr(client, method)(path, data, content_type="application/json", headers=headers)


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["detail"]


# --- Who may ask ----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_anonymous_is_401(client, conversation, route):
    assert_error(call(client, route, conversation.pk), 401, "unauthorized")


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_revoked_token_is_401(client, user, conversation, route):
    headers = token_headers(user, revoked=True)

    assert_error(call(client, route, conversation.pk, **headers), 401, "unauthorized")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization", ["Bearer chat_not-a-token", "Bearer", "bearer chat_" + "x" * 200]
)
def test_unknown_token_is_401(client, authorization):
    response = client.get(LIST_URL, headers={"Authorization": authorization})

    assert_error(response, 401, "unauthorized")


@pytest.mark.django_db
def test_bad_token_is_401_even_beside_a_session(client, user):
    client.force_login(user)

    response = client.get(LIST_URL, headers={"Authorization": "Bearer chat_wrong"})

    assert_error(response, 401, "unauthorized")


# Transactional: a send or regenerate closes the connection of the thread it runs its
# steps on, which is the test's own under the sync client.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route", CONVERSATION_ROUTES, ids=route_id)
def test_other_users_conversation_is_404(client, user, other_user, make_conversation, route):
    theirs = make_conversation(other_user, title="theirs")
    Message.objects.create(conversation=theirs, role="user", content="secret")
    client.force_login(user)

    assert_error(call(client, route, theirs.pk), 404, "not_found")
    theirs.refresh_from_db()
    assert theirs.title == "theirs" and theirs.messages.count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route", CONVERSATION_ROUTES, ids=route_id)
def test_other_users_conversation_is_404_with_a_token(client, user, other_user, route):
    theirs = Conversation.objects.create(owner=other_user, model="model-a")

    response = call(client, route, theirs.pk, **token_headers(user))

    assert_error(response, 404, "not_found")


@pytest.mark.django_db(transaction=True)
async def test_token_works_on_every_route_without_csrf(llm, user, settings):
    settings.CHAT_MODELS = ["test-model"]
    client = AsyncClient(enforce_csrf_checks=True)
    authorization = await token(user)

    async def send(method: str, path: str, data: Any = None, **headers: str) -> Any:
        body = json.dumps(data) if data is not None else ""
        return await getattr(client, method)(
            path, body, content_type="application/json", headers={**authorization, **headers}
        )

    created = await send("post", LIST_URL, {"title": "by script"})
    assert created.status_code == 201
    conversation = created.json()["id"]
    assert (await send("get", LIST_URL)).json()["results"][0]["id"] == conversation
    assert (await send("patch", url(conversation), {"title": "renamed"})).status_code == 200
    sent = await send("post", url(conversation, "messages"), {"content": "Hi"})
    assert sent.status_code == 201
    assert sent.json()["assistant_message"]["content"] == expected_text(20)
    streamed = await send("post", url(conversation, "regenerate"), **SSE)
    assert (await EventReader(streamed).rest())[-1].event == "done"
    events = await EventReader(await send("get", url(conversation, "events"))).rest()
    assert [e.event for e in events] == ["state"]
    assert (await send("post", url(conversation, "stop"))).status_code == 202
    assert (await send("get", url(conversation))).json()["title"] == "renamed"
    assert (await send("get", url(conversation, "export"))).status_code == 200
    assert (await send("get", MODELS_URL)).status_code == 200
    assert (await send("delete", url(conversation))).status_code == 204
    assert not await Conversation.objects.filter(pk=conversation).aexists()


async def token(user: Any) -> dict[str, str]:
    return await sync_to_async(token_headers)(user)


# --- CSRF -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("route", UNSAFE_ROUTES, ids=route_id)
def test_session_without_csrf_token_is_403_on_unsafe_routes(user, conversation, route):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = call(client, route, conversation.pk)

    assert_error(response, 403, "csrf_failed")
    assert "X-CSRFToken" in response.json()["error"]["detail"]
    assert Conversation.objects.get().title == ""


@pytest.mark.django_db
def test_session_get_needs_no_csrf_token(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    assert client.get(LIST_URL).status_code == 200


@pytest.mark.django_db
def test_session_patch_with_csrf_token_is_200(user, conversation):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies["csrftoken"] = secret = "b" * 32

    response = call(client, ROUTES[3], conversation.pk, **{"X-CSRFToken": secret})

    assert response.status_code == 200
    assert response.json()["title"] == "x"


# --- Errors ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/", "/api/nope/", "/api/conversations/not-a-uuid/", "/api/models"]
)
def test_unknown_api_path_is_404_json(client, user, path):
    client.force_login(user)

    assert_error(client.get(path), 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/nope/", "/api/conversations/not-a-uuid/stop/"])
def test_post_to_unknown_api_path_with_a_token_is_404_not_403(user, path):
    client = Client(enforce_csrf_checks=True)
    client.cookies["sessionid"] = ""

    assert_error(client.post(path, headers=token_headers(user)), 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (LIST_URL, "GET, POST"),
        ("/api/conversations/{id}/", "DELETE, GET, PATCH"),
        ("/api/conversations/{id}/messages/", "POST"),
        ("/api/conversations/{id}/events/", "GET"),
        ("/api/conversations/{id}/stop/", "POST"),
        ("/api/conversations/{id}/regenerate/", "POST"),
        ("/api/conversations/{id}/export/", "GET"),
        (MODELS_URL, "GET"),
    ],
)
def test_wrong_method_is_405_json_with_allow(client, user, conversation, path, allowed):
    client.force_login(user)

    response = client.put(path.format(id=conversation.pk))

    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == allowed


@pytest.mark.django_db
def test_server_error_is_500_json(client, user, monkeypatch):
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(chats.ChatService, "conversations", broken)
    client.force_login(user)

    assert_error(client.get(LIST_URL), 500, "internal_error")


@pytest.mark.parametrize("route", ROUTES, ids=route_id)
def test_api_views_are_async(route):
    """The ASGI handler serves async views without a thread of their own; it decides by
    this (chat.handlers.routes_to_async_view)."""
    match = resolve(route[1].format(id=uuid.uuid4()))

    assert iscoroutinefunction(match.func)


def test_openapi_document(client):
    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {path.format(id="{conversation_id}") for _, path, _ in ROUTES}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], f"{method} {path}"
            assert "401" in operation["responses"]
    assert set(document["components"]["securitySchemes"]) == {"BearerToken", "SessionCookie"}
