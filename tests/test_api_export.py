"""GET /api/conversations/<id>/export/: the whole transcript as a Markdown or JSON file."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from chat.models import Message
from tests.api_client import url


@pytest.fixture
def transcript(user, make_conversation):
    """A conversation with a complete exchange and a reply that was stopped."""
    conversation = make_conversation(
        user, title="Trip to Berlin: plans!", model="model-a", system_prompt="Be brief."
    )
    start = timezone.now() - timedelta(minutes=5)
    rows = [
        ("user", "Where to stay?", "complete", {}),
        (
            "assistant",
            "Mitte is central.",
            "complete",
            {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
        ),
        ("user", "And to eat?", "complete", {}),
        (
            "assistant",
            "Try the",
            "stopped",
            {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
        ),
    ]
    for i, (role, content, status, usage) in enumerate(rows):
        Message.objects.create(
            conversation=conversation,
            role=role,
            content=content,
            status=status,
            model="model-a" if role == "assistant" else "",
            created_at=start + timedelta(seconds=i),
            **usage,
        )
    return conversation


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_export_markdown_is_a_readable_download(logged_in, transcript):
    response = logged_in.get(url(transcript, "export"), {"format": "md"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="trip-to-berlin-plans.md"'
    text = response.content.decode()
    assert text.startswith("# Trip to Berlin: plans!\n")
    assert "Be brief." in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert [h.split(" ·")[0] for h in headings] == [
        "## System prompt",
        "## User",
        "## Assistant (model-a)",
        "## User",
        "## Assistant (model-a)",
    ]
    # In order, with the status only where the reply did not complete.
    assert text.index("Where to stay?") < text.index("Mitte is central.") < text.index("Try the")
    assert text.count("_Status:") == 1 and "_Status: stopped_" in text
    assert "_Usage: 12 prompt + 4 completion = 16 tokens_" in text
    assert "_Usage: 20 prompt + 2 completion = 22 tokens_" in text


@pytest.mark.django_db
def test_export_defaults_to_markdown(logged_in, transcript):
    response = logged_in.get(url(transcript, "export"))

    assert response["Content-Disposition"].endswith('.md"')


@pytest.mark.django_db
def test_export_json_holds_the_conversation_and_every_message(logged_in, transcript):
    response = logged_in.get(url(transcript, "export"), {"format": "json"})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="trip-to-berlin-plans.json"'
    body = response.json()
    assert body["conversation"]["id"] == str(transcript.pk)
    assert body["conversation"]["system_prompt"] == "Be brief."
    messages = body["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "stopped"),
    ]
    assert messages[1]["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "total_tokens": 16,
        "estimated": False,
    }


@pytest.mark.django_db
def test_export_untitled_conversation_is_named_by_its_id(logged_in, user, make_conversation):
    conversation = make_conversation(user)

    response = logged_in.get(url(conversation, "export"))

    expected = f'attachment; filename="conversation-{str(conversation.pk)[:8]}.md"'
    assert response["Content-Disposition"] == expected
    assert response.content.decode().startswith("# Untitled conversation\n")


@pytest.mark.django_db
def test_export_filename_is_a_slug_of_the_title(logged_in, user, make_conversation):
    conversation = make_conversation(user, title='"; rm -rf /')

    response = logged_in.get(url(conversation, "export"))

    assert response["Content-Disposition"] == 'attachment; filename="rm-rf.md"'


@pytest.mark.django_db
def test_export_failed_reply_shows_its_error(logged_in, user, make_conversation):
    conversation = make_conversation(user)
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        status="failed",
        error_code="upstream_error",
        error_detail="The model failed.",
    )

    text = logged_in.get(url(conversation, "export")).content.decode()

    assert "_Status: failed_" in text
    assert "_Error: upstream_error: The model failed._" in text


@pytest.mark.django_db
def test_export_unknown_format_is_400(logged_in, transcript):
    response = logged_in.get(url(transcript, "export"), {"format": "pdf"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
