"""The JSON API's conversation routes: auth, ownership, validation and cursor pagination."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import AsyncClient, Client
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Message

LIST_URL = "/api/conversations/"
MODELS_URL = "/api/models/"


def detail_url(conversation: Conversation | str) -> str:
    pk = conversation.pk if isinstance(conversation, Conversation) else conversation
    return f"/api/conversations/{pk}/"


def post_json(client: Client, url: str, data: Any, **extra: Any) -> Any:
    body = data if isinstance(data, str | bytes) else json.dumps(data)
    return client.post(url, body, content_type="application/json", **extra)


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["detail"], str)
    assert error["detail"]


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def chat_models(settings):
    settings.CHAT_MODELS = ["model-a", "model-b"]


# --- Models --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_models_lists_settings_with_first_as_default(logged_in):
    response = logged_in.get(MODELS_URL)

    assert response.status_code == 200
    assert response.json() == {"models": ["model-a", "model-b"], "default": "model-a"}


@pytest.mark.django_db
def test_models_wrong_method_is_405_json(logged_in):
    response = logged_in.put(MODELS_URL)

    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET"


# --- Auth ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_conversations_anonymous_is_401(client, method):
    assert_error(getattr(client, method)(LIST_URL), 401, "unauthorized")


@pytest.mark.django_db
def test_detail_anonymous_is_401(client, user, make_conversation):
    conversation = make_conversation(user)

    assert_error(client.get(detail_url(conversation)), 401, "unauthorized")


@pytest.mark.django_db
def test_models_anonymous_is_401(client):
    assert_error(client.get(MODELS_URL), 401, "unauthorized")


@pytest.mark.django_db
def test_create_without_csrf_token_is_403(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = post_json(client, LIST_URL, {"title": "no token"})

    assert_error(response, 403, "csrf_failed")
    assert "X-CSRFToken" in response.json()["error"]["detail"]
    assert not Conversation.objects.exists()


@pytest.mark.django_db
def test_pages_keep_djangos_csrf_page(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post(reverse("chat:tokens"), {"name": "no token"})

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_create_with_csrf_token_is_201(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    token = "a" * 32  # any 32-character secret, sent both as cookie and header
    client.cookies["csrftoken"] = token

    response = post_json(client, LIST_URL, {"title": "with token"}, HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 201


# --- Create --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_defaults_to_first_model(logged_in, user):
    response = post_json(logged_in, LIST_URL, {})

    assert response.status_code == 201
    body = response.json()
    conversation = Conversation.objects.get(pk=body["id"])
    assert conversation.owner == user
    assert body["model"] == conversation.model == "model-a"
    assert body["title"] == ""


@pytest.mark.django_db
def test_create_empty_body_is_accepted(logged_in):
    response = logged_in.post(LIST_URL, "", content_type="application/json")

    assert response.status_code == 201
    assert response.json()["model"] == "model-a"


@pytest.mark.django_db
def test_create_stores_given_fields(logged_in):
    data = {"title": "Trip", "model": "model-b", "system_prompt": "Be brief."}

    response = post_json(logged_in, LIST_URL, data)

    assert response.status_code == 201
    conversation = Conversation.objects.get(pk=response.json()["id"])
    assert (conversation.title, conversation.model, conversation.system_prompt) == (
        "Trip",
        "model-b",
        "Be brief.",
    )
    assert response.json()["system_prompt"] == "Be brief."


@pytest.mark.django_db
def test_create_title_of_max_length_is_accepted(logged_in):
    response = post_json(logged_in, LIST_URL, {"title": "x" * 200})

    assert response.status_code == 201


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("{not json", id="invalid-json"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param([1, 2], id="not-an-object"),
        pytest.param({"title": 5}, id="title-not-string"),
        pytest.param({"model": None}, id="model-null"),
        pytest.param({"system_prompt": ["a"]}, id="prompt-not-string"),
        pytest.param({"model": "gpt-99"}, id="unknown-model"),
        pytest.param({"titel": "typo"}, id="unknown-field"),
    ],
)
def test_create_bad_input_is_400(logged_in, body):
    response = post_json(logged_in, LIST_URL, body)

    assert_error(response, 400, "bad_request")
    assert not Conversation.objects.exists()


@pytest.mark.django_db
def test_create_title_too_long_is_413(logged_in):
    response = post_json(logged_in, LIST_URL, {"title": "x" * 201})

    assert_error(response, 413, "too_long")
    assert not Conversation.objects.exists()


@pytest.mark.django_db
def test_create_system_prompt_too_long_is_413(logged_in, settings):
    settings.CHAT_MAX_INPUT_CHARS = 100

    response = post_json(logged_in, LIST_URL, {"system_prompt": "x" * 101})

    assert_error(response, 413, "too_long")
    assert "100" in response.json()["error"]["detail"]
    assert not Conversation.objects.exists()
    longest = post_json(logged_in, LIST_URL, {"system_prompt": "x" * 100})
    assert longest.status_code == 201


# --- List ----------------------------------------------------------------------------------


def ids(response: Any) -> list[str]:
    return [row["id"] for row in response.json()["results"]]


@pytest.fixture
def many_conversations(user, other_user, make_conversation):
    """45 conversations, three to each timestamp so that pages split ties."""
    start = timezone.now()
    made = [
        make_conversation(user, title=f"c{i}", updated_at=start - timedelta(minutes=i // 3))
        for i in range(45)
    ]
    make_conversation(other_user, title="not yours", updated_at=start + timedelta(days=1))
    made.sort(key=lambda c: (c.updated_at, c.pk), reverse=True)
    return [str(c.pk) for c in made]


@pytest.mark.django_db
def test_list_paginates_newest_first_across_three_pages(logged_in, many_conversations):
    first = logged_in.get(LIST_URL)
    second = logged_in.get(LIST_URL, {"cursor": first.json()["next"]})
    third = logged_in.get(LIST_URL, {"cursor": second.json()["next"]})

    assert [len(ids(page)) for page in (first, second, third)] == [20, 20, 5]
    assert ids(first) + ids(second) + ids(third) == many_conversations
    assert third.json()["next"] is None


@pytest.mark.django_db
def test_list_cursor_ignores_conversations_created_between_pages(
    logged_in, user, many_conversations, make_conversation
):
    first = logged_in.get(LIST_URL)
    make_conversation(user, title="newer")

    second = logged_in.get(LIST_URL, {"cursor": first.json()["next"]})

    assert ids(second) == many_conversations[20:40]


@pytest.mark.django_db
def test_list_limit_sets_page_size(logged_in, many_conversations):
    response = logged_in.get(LIST_URL, {"limit": "7"})

    assert ids(response) == many_conversations[:7]
    assert response.json()["next"] is not None


@pytest.mark.django_db
def test_list_limit_100_returns_everything(logged_in, many_conversations):
    response = logged_in.get(LIST_URL, {"limit": "100"})

    assert ids(response) == many_conversations
    assert response.json()["next"] is None


@pytest.mark.django_db
@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "101"}, {"limit": "ten"}])
def test_list_bad_limit_is_400(logged_in, params):
    assert_error(logged_in.get(LIST_URL, params), 400, "bad_request")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        "bm9wZQ",  # "nope"
        "WyJ4IiwgInkiXQ",  # ["x", "y"]
        "WzEsIDJd",  # [1, 2]
        # ["2024-01-01T00:00:00", <uuid>]: naive timestamp
        "WyIyMDI0LTAxLTAxVDAwOjAwOjAwIiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJd",
    ],
)
def test_list_bad_cursor_is_400(logged_in, cursor):
    assert_error(logged_in.get(LIST_URL, {"cursor": cursor}), 400, "bad_request")


@pytest.mark.django_db
def test_list_excludes_other_users_conversations(logged_in, other_user, make_conversation):
    make_conversation(other_user, title="secret")

    response = logged_in.get(LIST_URL)

    assert response.json() == {"results": [], "next": None}


@pytest.mark.django_db
def test_list_search_matches_title_case_insensitively(logged_in, user, make_conversation):
    wanted = make_conversation(user, title="Planning the Berlin trip")
    make_conversation(user, title="Groceries")

    response = logged_in.get(LIST_URL, {"q": "berlin"})

    assert ids(response) == [str(wanted.pk)]


@pytest.mark.django_db
def test_list_search_matches_message_text_once(logged_in, user, make_conversation):
    wanted = make_conversation(user, title="untitled")
    other = make_conversation(user, title="other")
    for content in ("Tell me about SOURDOUGH", "Sourdough needs a starter"):
        Message.objects.create(conversation=wanted, role="user", content=content)
    Message.objects.create(conversation=other, role="user", content="rye bread")

    response = logged_in.get(LIST_URL, {"q": "sourdough"})

    assert ids(response) == [str(wanted.pk)]


@pytest.mark.django_db
def test_list_search_excludes_other_users_messages(logged_in, other_user, make_conversation):
    theirs = make_conversation(other_user)
    Message.objects.create(conversation=theirs, role="user", content="sourdough")

    response = logged_in.get(LIST_URL, {"q": "sourdough"})

    assert ids(response) == []


# --- Detail --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_detail_includes_messages_oldest_first(logged_in, user, make_conversation):
    conversation = make_conversation(user, title="Hello")
    now = timezone.now()
    # Created out of order so that only ordering by created_at passes.
    later = Message.objects.create(
        conversation=conversation, role="assistant", content="Hi!", created_at=now
    )
    earlier = Message.objects.create(
        conversation=conversation, role="user", content="Hello", created_at=now - timedelta(1)
    )

    response = logged_in.get(detail_url(conversation))

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(conversation.pk)
    assert body["title"] == "Hello"
    assert [m["id"] for m in body["messages"]] == [str(earlier.pk), str(later.pk)]
    assert body["messages"][1]["role"] == "assistant"


@pytest.mark.django_db
def test_detail_other_users_conversation_is_404_like_missing(
    logged_in, other_user, make_conversation
):
    theirs = make_conversation(other_user)

    response = logged_in.get(detail_url(theirs))
    missing = logged_in.get(detail_url("00000000-0000-0000-0000-000000000000"))

    assert_error(response, 404, "not_found")
    assert response.json() == missing.json()


@pytest.mark.django_db(transaction=True)
async def test_requests_arriving_together_each_get_their_own_user_and_conversation(
    user, other_user
):
    """The API looks users up and stores conversations in batches (`chat.batching`)."""
    clients = []
    for owner in [user, other_user] * 5:
        client = AsyncClient()
        await client.aforce_login(owner)
        clients.append((owner, client))
    anonymous = AsyncClient()

    def create(client: AsyncClient, title: str) -> Any:
        return client.post(LIST_URL, {"title": title}, content_type="application/json")

    responses = await asyncio.gather(
        *(create(client, f"{owner.username} {i}") for i, (owner, client) in enumerate(clients)),
        create(anonymous, "nobody"),
    )

    *created, refused = responses
    assert [r.status_code for r in created] == [201] * 10 and refused.status_code == 401
    titles = {r.json()["id"]: r.json()["title"] for r in created}
    assert len(titles) == 10
    stored = Conversation.objects.values_list("id", "title", "owner__username")
    async for conversation_id, title, owner in stored:
        assert titles[str(conversation_id)] == title and title.startswith(owner)


# --- Change and delete ---------------------------------------------------------------------


def patch_json(client: Client, url: str, data: Any) -> Any:
    body = data if isinstance(data, str | bytes) else json.dumps(data)
    return client.patch(url, body, content_type="application/json")


@pytest.mark.django_db
def test_patch_changes_only_the_fields_sent(logged_in, user, make_conversation):
    conversation = make_conversation(user, title="Old", model="model-a", system_prompt="Keep.")

    response = patch_json(
        logged_in, detail_url(conversation), {"title": "  New  ", "model": "model-b"}
    )

    assert response.status_code == 200
    assert (response.json()["title"], response.json()["model"]) == ("New", "model-b")
    conversation.refresh_from_db()
    assert (conversation.title, conversation.model, conversation.system_prompt) == (
        "New",
        "model-b",
        "Keep.",
    )
    assert response.json()["updated_at"] == conversation.updated_at.isoformat()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("{not json", id="invalid-json"),
        pytest.param("", id="no-body"),
        pytest.param([1], id="not-an-object"),
        pytest.param({"title": None}, id="title-null"),
        pytest.param({"model": "gpt-99"}, id="unknown-model"),
        pytest.param({"owner": 2}, id="unknown-field"),
    ],
)
def test_patch_bad_input_is_400(logged_in, user, make_conversation, body):
    conversation = make_conversation(user, title="Old")

    assert_error(patch_json(logged_in, detail_url(conversation), body), 400, "bad_request")
    conversation.refresh_from_db()
    assert conversation.title == "Old"


@pytest.mark.django_db
def test_patch_title_too_long_is_413(logged_in, user, make_conversation):
    conversation = make_conversation(user)

    response = patch_json(logged_in, detail_url(conversation), {"title": "x" * 201})

    assert_error(response, 413, "too_long")


@pytest.mark.django_db
def test_patch_system_prompt_too_long_is_413(logged_in, user, make_conversation, settings):
    settings.CHAT_MAX_INPUT_CHARS = 100
    conversation = make_conversation(user, system_prompt="Keep.")

    response = patch_json(logged_in, detail_url(conversation), {"system_prompt": "x" * 101})

    assert_error(response, 413, "too_long")
    conversation.refresh_from_db()
    assert conversation.system_prompt == "Keep."


@pytest.mark.django_db
def test_delete_is_204_and_removes_the_messages(logged_in, user, make_conversation):
    conversation = make_conversation(user)
    Message.objects.create(conversation=conversation, role="user", content="Hi")

    response = logged_in.delete(detail_url(conversation))

    assert response.status_code == 204 and response.content == b""
    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert_error(logged_in.delete(detail_url(conversation)), 404, "not_found")


@pytest.mark.django_db(transaction=True)
async def test_patch_and_delete_tell_open_tabs(user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    client = AsyncClient()
    await client.aforce_login(user)

    await client.patch(
        detail_url(conversation), {"title": "Renamed"}, content_type="application/json"
    )
    changed = await socket.receive()
    await client.delete(detail_url(conversation))
    deleted = await socket.receive()

    assert changed["type"] == "conversation" and changed["conversation"]["title"] == "Renamed"
    assert deleted == {"type": "deleted", "conversation_id": str(conversation.pk)}
