"""The admin as staff use it: transcripts listed with their stats, searched, read, never edited
(not even by superusers). That each read is recorded is tests/test_admin_audit.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Message

CHANGELIST_URL = reverse("admin:chat_conversation_changelist")


def add_messages(conversation: Conversation, *specs: dict[str, object]) -> list[Message]:
    """Messages one second apart, in the order given."""
    start = timezone.now() - timedelta(hours=1)
    return [
        Message.objects.create(
            conversation=conversation, created_at=start + timedelta(seconds=i), **spec
        )
        for i, spec in enumerate(specs)
    ]


@pytest.fixture
def transcript(user, make_conversation):
    conversation = make_conversation(user, title="Soup recipes")
    add_messages(
        conversation,
        {"role": "user", "content": "A soup, please"},
        {"role": "assistant", "content": "Leek soup.", "total_tokens": 15},
        {"role": "user", "content": "Another one"},
        {"role": "assistant", "content": "Pea so", "status": "stopped", "total_tokens": 3},
        # A later user message: the last *reply* is still the stopped one.
        {"role": "user", "content": "Hello?"},
    )
    return conversation


@pytest.mark.django_db
def test_changelist_annotates_reply_status_count_and_tokens(admin_client, transcript):
    response = admin_client.get(CHANGELIST_URL)

    assert response.status_code == 200
    [row] = response.context["cl"].result_list
    assert row.last_reply_status == "stopped"
    assert row.message_count == 5
    assert row.tokens_used == 18
    assert b"Soup recipes" in response.content


@pytest.mark.django_db
def test_changelist_conversation_without_messages_shows_zero(
    admin_client, user, make_conversation
):
    make_conversation(user, title="Empty")

    response = admin_client.get(CHANGELIST_URL)

    [row] = response.context["cl"].result_list
    assert (row.last_reply_status, row.message_count, row.tokens_used) == (None, 0, None)


@pytest.mark.django_db
def test_changelist_search_by_message_text_finds_conversation_once(
    admin_client, user, make_conversation
):
    wanted = make_conversation(user, title="Untitled")
    add_messages(
        wanted,
        {"role": "user", "content": "needle one"},
        {"role": "assistant", "content": "needle two", "total_tokens": 4},
    )
    add_messages(make_conversation(user, title="Other"), {"role": "user", "content": "hay"})

    response = admin_client.get(CHANGELIST_URL, {"q": "needle"})

    cl = response.context["cl"]
    assert [row.pk for row in cl.result_list] == [wanted.pk]
    assert cl.result_count == 1
    # The join used by the search must not multiply the annotated sums either.
    assert cl.result_list[0].tokens_used == 4


@pytest.mark.django_db
def test_changelist_search_by_exact_username(admin_client, user, other_user, make_conversation):
    theirs = make_conversation(other_user, title="Mallory's")
    make_conversation(user, title="Alice's")

    response = admin_client.get(CHANGELIST_URL, {"q": other_user.username})

    assert [row.pk for row in response.context["cl"].result_list] == [theirs.pk]


@pytest.mark.django_db
def test_changelist_query_count_does_not_grow_with_rows(
    admin_client, user, other_user, make_conversation, django_assert_max_num_queries
):
    for i in range(30):
        conversation = make_conversation(user if i % 2 else other_user, title=f"c{i}")
        add_messages(
            conversation,
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "total_tokens": 2},
        )

    # Session, user, count, rows, the model filter's choices: one N+1 would add 30.
    with django_assert_max_num_queries(6):
        response = admin_client.get(CHANGELIST_URL)

    assert len(response.context["cl"].result_list) == 30


@pytest.mark.django_db
def test_change_page_shows_transcript_read_only_in_order(admin_client, transcript):
    url = reverse("admin:chat_conversation_change", args=[transcript.pk])

    response = admin_client.get(url)

    assert response.status_code == 200
    [inline] = response.context["inline_admin_formsets"]
    assert not inline.has_add_permission
    assert not inline.has_change_permission
    assert not inline.has_delete_permission
    content = response.content.decode()
    # Shown as text, not as form fields that could be submitted.
    assert 'name="messages-0-content"' not in content
    positions = [content.index(text) for text in ("A soup, please", "Leek soup.", "Hello?")]
    assert positions == sorted(positions)
    assert "15 = 0 in + 0 out" in content


@pytest.mark.django_db
def test_change_page_has_no_form_and_no_save_buttons_for_superusers(admin_client, transcript):
    url = reverse("admin:chat_conversation_change", args=[transcript.pk])

    response = admin_client.get(url)

    assert response.status_code == 200
    assert not response.context["has_change_permission"]
    content = response.content.decode()
    assert "Soup recipes" in content
    for name in ("title", "model", "system_prompt", "_save", "_continue", "_addanother"):
        assert f'name="{name}"' not in content


@pytest.mark.django_db
def test_change_page_post_changes_nothing(admin_client, transcript):
    url = reverse("admin:chat_conversation_change", args=[transcript.pk])
    first = transcript.messages.order_by("created_at").first()

    response = admin_client.post(
        url,
        {
            "title": "Renamed",
            "model": "other-model",
            "system_prompt": "Obey the admin.",
            "messages-TOTAL_FORMS": "1",
            "messages-INITIAL_FORMS": "1",
            "messages-0-id": str(first.pk),
            "messages-0-conversation": str(transcript.pk),
            "messages-0-content": "rewritten",
        },
    )

    assert response.status_code == 403
    transcript.refresh_from_db()
    first.refresh_from_db()
    assert (transcript.title, transcript.model, transcript.system_prompt) == (
        "Soup recipes",
        "test-model",
        "",
    )
    assert first.content == "A soup, please"


@pytest.mark.django_db
def test_change_page_readable_by_staff_with_view_permission(client, transcript):
    staff = get_user_model().objects.create_user("auditor", is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="chat",
            codename__in=["view_conversation", "view_message"],
        )
    )
    client.force_login(staff)

    response = client.get(reverse("admin:chat_conversation_change", args=[transcript.pk]))

    assert response.status_code == 200
    assert "Leek soup." in response.content.decode()
    assert not response.context["has_change_permission"]


@pytest.mark.django_db
def test_conversation_admin_add_and_delete_are_forbidden(admin_client, transcript):
    add = admin_client.get(reverse("admin:chat_conversation_add"))
    delete = admin_client.get(reverse("admin:chat_conversation_delete", args=[transcript.pk]))

    assert (add.status_code, delete.status_code) == (403, 403)


@pytest.mark.django_db
def test_message_admin_is_read_only(admin_client, transcript):
    message = transcript.messages.first()
    change_url = reverse("admin:chat_message_change", args=[message.pk])

    listing = admin_client.get(reverse("admin:chat_message_changelist"))
    change = admin_client.get(change_url)

    assert listing.status_code == 200
    assert change.status_code == 200
    assert not change.context["has_change_permission"]
    assert admin_client.post(change_url, {"content": "rewritten"}).status_code == 403
    assert admin_client.get(reverse("admin:chat_message_add")).status_code == 403


# --- How the transcript reads ------------------------------------------------------------

CODE = 'Here:\n\n```python\ndef soup():\n    if hot:\n        return "<leek>"\n```'


@pytest.mark.django_db
def test_change_page_keeps_code_indentation(admin_client, user, make_conversation):
    conversation = make_conversation(user, title="Code")
    add_messages(conversation, {"role": "assistant", "content": CODE})

    response = admin_client.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))

    content = response.content.decode()
    # Whole, spaces and line breaks as written (no <br>), escaped, in a <pre> that wraps.
    escaped = CODE.replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    assert f'<pre class="transcript-text">{escaped}</pre>' in content
    assert "/static/chat/admin.css" in content


@pytest.mark.django_db
def test_message_page_keeps_code_indentation(admin_client, user, make_conversation):
    conversation = make_conversation(user, title="Code")
    [message] = add_messages(conversation, {"role": "assistant", "content": CODE})

    response = admin_client.get(reverse("admin:chat_message_change", args=[message.pk]))

    content = response.content.decode()
    assert response.status_code == 200
    assert '<pre class="transcript-text">Here:\n\n```python\ndef soup():\n    if hot:' in content


# --- The icon ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_pages_name_the_sites_icon(admin_client, client):
    for response in (admin_client.get(reverse("admin:index")), client.get(reverse("admin:login"))):
        assert response.status_code == 200
        assert '<link rel="icon" href="/static/chat/favicon.svg"' in response.content.decode()


def test_favicon_ico_is_the_sites_icon(client):
    # Asked for by any page that names no icon, logged in or not.
    response = client.get("/favicon.ico")

    assert (response.status_code, response["Location"]) == (302, "/static/chat/favicon.svg")
    assert finders.find("chat/favicon.svg")
