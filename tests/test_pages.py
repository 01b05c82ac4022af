"""The HTML pages: login required, owner-scoped, and served under a strict CSP."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, Message
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

MakeConversation = Callable[..., Conversation]


class ScriptTags(HTMLParser):
    """Collects the attributes of every <script> tag of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))


def script_tags(html: str) -> list[dict[str, str | None]]:
    parser = ScriptTags()
    parser.feed(html)
    return parser.scripts


@pytest.fixture
def logged_in(client: Client, user: AbstractBaseUser) -> Client:
    assert client.login(username=user.get_username(), password=PASSWORD)
    return client


def conversation_url(conversation_id: uuid.UUID) -> str:
    return reverse("chat:conversation", args=[conversation_id])


# --- Login required ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chat:index", "chat:conversation"])
def test_page_anonymous_redirects_to_login(client: Client, name: str) -> None:
    url = reverse(name, args=[uuid.uuid4()] if name == "chat:conversation" else [])
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


def test_new_anonymous_redirects_to_login(client: Client) -> None:
    response = client.get(reverse("chat:new"))
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={reverse('chat:new')}"


def test_login_page_logs_in_and_goes_to_index(client: Client, user: AbstractBaseUser) -> None:
    page = client.get(reverse("login"))
    assert page.status_code == 200
    response = client.post(
        reverse("login"), {"username": user.get_username(), "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("chat:index")


# --- The index --------------------------------------------------------------------------


def test_index_lists_only_own_conversations_newest_first(
    logged_in: Client,
    user: AbstractBaseUser,
    other_user: AbstractBaseUser,
    make_conversation: MakeConversation,
) -> None:
    older = make_conversation(user, title="Older chat")
    newer = make_conversation(user, title="Newer chat")
    Conversation.objects.filter(pk=older.pk).update(updated_at=newer.updated_at.replace(year=2020))
    make_conversation(other_user, title="Mallory's secret")

    html = logged_in.get(reverse("chat:index")).content.decode()

    assert "Mallory" not in html
    assert html.index("Newer chat") < html.index("Older chat")
    assert conversation_url(newer.id) in html


def test_index_untitled_conversation_shows_new_chat(
    logged_in: Client, user: AbstractBaseUser, make_conversation: MakeConversation
) -> None:
    conversation = make_conversation(user)
    html = logged_in.get(reverse("chat:index")).content.decode()
    assert f'href="{conversation_url(conversation.id)}"' in html
    assert "New chat</span>" in html


def test_index_offers_new_chat_link(logged_in: Client) -> None:
    html = logged_in.get(reverse("chat:index")).content.decode()
    assert f'href="{reverse("chat:new")}"' in html


# --- Starting a conversation: a draft, stored by its first send ---------------------------


def test_new_shows_a_draft_and_stores_nothing(logged_in: Client) -> None:
    response = logged_in.get(reverse("chat:new"))
    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-conversation-id=""' in html
    assert 'id="composer-input"' in html
    assert f'<option value="{settings.CHAT_MODELS[0]}" selected>' in html
    # The first send creates the conversation through the API, with the page's CSRF token.
    assert re.search(r'data-csrf-token="[^"]+"', html)
    assert "/export/" not in html
    assert not Conversation.objects.exists()


def test_new_lists_no_current_conversation(
    logged_in: Client, user: AbstractBaseUser, make_conversation: MakeConversation
) -> None:
    make_conversation(user, title="Another chat")
    html = logged_in.get(reverse("chat:new")).content.decode()
    assert 'aria-current="page"' not in html
    assert Conversation.objects.count() == 1


def test_new_post_is_not_allowed_and_creates_nothing(logged_in: Client) -> None:
    # Scripts create conversations with POST /api/conversations/.
    response = logged_in.post(reverse("chat:new"))
    assert response.status_code == 405
    assert not Conversation.objects.exists()


# --- One conversation -------------------------------------------------------------------


def test_conversation_shows_transcript_escaped(
    logged_in: Client, user: AbstractBaseUser, make_conversation: MakeConversation
) -> None:
    conversation = make_conversation(user, title="Greetings")
    Message.objects.create(conversation=conversation, role="user", content="<b>hi</b>")
    Message.objects.create(conversation=conversation, role="assistant", content="Hello there")

    response = logged_in.get(conversation_url(conversation.id))

    html = response.content.decode()
    assert response.status_code == 200
    assert "&lt;b&gt;hi&lt;/b&gt;" in html
    assert "<b>hi</b>" not in html
    assert html.index("&lt;b&gt;hi") < html.index("Hello there")
    assert f'data-conversation-id="{conversation.id}"' in html


def test_conversation_shows_why_a_reply_ended(
    logged_in: Client, user: AbstractBaseUser, make_conversation: MakeConversation
) -> None:
    conversation = make_conversation(user)
    Message.objects.create(conversation=conversation, role="assistant", status="stopped")
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        status="failed",
        error_code="upstream_error",
        error_detail="The model is overloaded.",
    )

    html = logged_in.get(conversation_url(conversation.id)).content.decode()

    assert '<div class="message__status">stopped</div>' in html
    assert '<div class="message__status">failed: The model is overloaded.</div>' in html


def test_conversation_page_knows_where_to_log_in_again(
    logged_in: Client, user: AbstractBaseUser, make_conversation: MakeConversation
) -> None:
    conversation = make_conversation(user)
    url = conversation_url(conversation.id)
    html = logged_in.get(url).content.decode()
    assert f'data-login-url="{reverse("login")}?next={url}"' in html


def test_conversation_of_another_user_is_404(
    logged_in: Client, other_user: AbstractBaseUser, make_conversation: MakeConversation
) -> None:
    theirs = make_conversation(other_user, title="Mallory's secret")
    response = logged_in.get(conversation_url(theirs.id))
    assert response.status_code == 404
    assert b"Mallory" not in response.content


def test_conversation_missing_is_404(logged_in: Client) -> None:
    assert logged_in.get(conversation_url(uuid.uuid4())).status_code == 404


# --- Content-Security-Policy ------------------------------------------------------------


@pytest.mark.parametrize("page", ["login", "index", "conversation"])
def test_page_has_csp_and_no_inline_script(
    logged_in: Client, user: AbstractBaseUser, make_conversation: MakeConversation, page: str
) -> None:
    conversation = make_conversation(user)
    url = {
        "login": reverse("login"),
        "index": reverse("chat:index"),
        "conversation": conversation_url(conversation.id),
    }[page]

    response = logged_in.get(url)

    assert response.status_code == 200
    assert "script-src 'self'" in response["Content-Security-Policy"]
    html = response.content.decode()
    assert " style=" not in html
    for script in script_tags(html):
        assert script.get("src") or script.get("type") == "application/json", script


def test_conversation_page_loads_its_script(
    logged_in: Client, user: AbstractBaseUser, make_conversation: MakeConversation
) -> None:
    conversation = make_conversation(user)
    html = logged_in.get(conversation_url(conversation.id)).content.decode()
    sources = [script.get("src") for script in script_tags(html)]
    assert "/static/chat/conversation.js" in sources


@pytest.mark.parametrize("local", [False, True])
def test_conversation_names_its_model_and_says_when_local(
    logged_in: Client,
    user: AbstractBaseUser,
    make_conversation: MakeConversation,
    settings: Any,
    local: bool,
) -> None:
    settings.CHAT_LOCAL_MODEL = local
    conversation = make_conversation(user, model="SmolLM2-135M-Instruct")
    html = logged_in.get(conversation_url(conversation.id)).content.decode()
    assert "SmolLM2-135M-Instruct" in html
    assert ("runs offline" in html) is local
