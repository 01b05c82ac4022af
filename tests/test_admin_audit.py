"""Every staff read of a transcript in the admin leaves a `TranscriptRead`: who, when, which
conversation, from which page. The records are listed read-only and outlive what they name."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Message, TranscriptRead

AUDIT_URL = reverse("admin:chat_transcriptread_changelist")


def conversation_page(conversation: Conversation) -> str:
    return reverse("admin:chat_conversation_change", args=[conversation.pk])


@pytest.fixture
def transcript(user, make_conversation):
    conversation = make_conversation(user, title="Soup recipes")
    Message.objects.create(conversation=conversation, role="user", content="A soup, please")
    return conversation


@pytest.fixture
def auditor(db):
    """Staff allowed to read transcripts, and nothing more."""
    staff = get_user_model().objects.create_user("auditor", is_staff=True)
    staff.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="chat",
            codename__in=["view_conversation", "view_message", "view_transcriptread"],
        )
    )
    return staff


def make_read(reader, conversation_id, *, ago: timedelta = timedelta()) -> TranscriptRead:
    return TranscriptRead.objects.create(
        reader=reader,
        reader_username=reader.username,
        conversation_id=conversation_id,
        via=TranscriptRead.Via.CONVERSATION_PAGE,
        read_at=timezone.now() - ago,
    )


# --- Recording ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_change_page_records_one_read_with_reader_and_conversation(client, auditor, transcript):
    client.force_login(auditor)

    response = client.get(conversation_page(transcript))

    assert response.status_code == 200
    [read] = TranscriptRead.objects.all()
    assert (read.reader, read.reader_username) == (auditor, "auditor")
    assert read.conversation_id == transcript.pk
    assert read.via == TranscriptRead.Via.CONVERSATION_PAGE
    assert timezone.now() - read.read_at < timedelta(minutes=1)


@pytest.mark.django_db
def test_change_page_records_each_view(admin_client, admin_user, transcript):
    admin_client.get(conversation_page(transcript))
    admin_client.get(conversation_page(transcript))

    reads = TranscriptRead.objects.all()
    assert [(r.reader, r.conversation_id) for r in reads] == [(admin_user, transcript.pk)] * 2


@pytest.mark.django_db
def test_changelist_and_search_record_no_read(admin_client, transcript):
    admin_client.get(reverse("admin:chat_conversation_changelist"))
    admin_client.get(reverse("admin:chat_conversation_changelist"), {"q": "soup"})

    assert not TranscriptRead.objects.exists()


@pytest.mark.django_db
def test_pages_that_show_no_transcript_record_no_read(client, admin_client, user, transcript):
    missing = reverse("admin:chat_conversation_change", args=[Conversation().pk])
    assert admin_client.get(missing).status_code == 302  # "doesn't exist", back to the list
    assert admin_client.post(conversation_page(transcript), {"title": "x"}).status_code == 403
    user.is_staff = True  # staff, but without the view permission
    user.save()
    client.force_login(user)
    assert client.get(conversation_page(transcript)).status_code == 403

    assert not TranscriptRead.objects.exists()


@pytest.mark.django_db
def test_message_page_records_a_read_of_its_conversation(client, auditor, transcript):
    message = transcript.messages.get()
    client.force_login(auditor)

    response = client.get(reverse("admin:chat_message_change", args=[message.pk]))

    assert response.status_code == 200
    [read] = TranscriptRead.objects.all()
    assert (read.reader, read.conversation_id) == (auditor, transcript.pk)
    assert read.via == TranscriptRead.Via.MESSAGE_PAGE


@pytest.mark.django_db
def test_read_survives_deleting_the_conversation_and_the_reader(client, auditor, transcript):
    client.force_login(auditor)
    client.get(conversation_page(transcript))
    conversation_id = transcript.pk

    transcript.delete()
    client.logout()
    auditor.delete()

    [read] = TranscriptRead.objects.all()
    assert (read.reader, read.reader_username) == (None, "auditor")
    assert read.conversation_id == conversation_id


# --- The list of reads ----------------------------------------------------------------------


@pytest.mark.django_db
def test_audit_list_shows_reads_newest_first(admin_client, auditor, transcript):
    old = make_read(auditor, transcript.pk, ago=timedelta(days=2))
    new = make_read(auditor, transcript.pk)

    response = admin_client.get(AUDIT_URL)

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [new, old]
    assert str(transcript.pk) in response.content.decode()


@pytest.mark.django_db
def test_audit_list_filters_by_reader_and_date(admin_client, admin_user, auditor, transcript):
    today = make_read(auditor, transcript.pk)
    make_read(auditor, transcript.pk, ago=timedelta(days=3))
    make_read(admin_user, transcript.pk)
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)

    by_reader = admin_client.get(AUDIT_URL, {"reader__id__exact": auditor.pk})
    by_both = admin_client.get(
        AUDIT_URL,
        {
            "reader__id__exact": auditor.pk,
            "read_at__gte": midnight.isoformat(),
            "read_at__lt": (midnight + timedelta(days=1)).isoformat(),
        },
    )

    assert len(by_reader.context["cl"].result_list) == 2
    assert list(by_both.context["cl"].result_list) == [today]


@pytest.mark.django_db
def test_audit_list_searches_conversation_id_and_username(
    admin_client, admin_user, auditor, user, make_conversation
):
    first, second = make_conversation(user), make_conversation(user)
    of_first = make_read(auditor, first.pk)
    of_second = make_read(admin_user, second.pk)

    by_id = admin_client.get(AUDIT_URL, {"q": str(first.pk)})
    by_username = admin_client.get(AUDIT_URL, {"q": admin_user.username})

    assert list(by_id.context["cl"].result_list) == [of_first]
    assert list(by_username.context["cl"].result_list) == [of_second]


@pytest.mark.django_db
def test_audit_records_cannot_be_added_changed_or_deleted(admin_client, auditor, transcript):
    read = make_read(auditor, transcript.pk)
    change_url = reverse("admin:chat_transcriptread_change", args=[read.pk])

    listing = admin_client.get(AUDIT_URL)
    change = admin_client.get(change_url)
    add = admin_client.get(reverse("admin:chat_transcriptread_add"))
    post = admin_client.post(change_url, {"reader_username": "nobody"})
    delete = admin_client.post(
        reverse("admin:chat_transcriptread_delete", args=[read.pk]), {"post": "yes"}
    )
    bulk_delete = admin_client.post(
        AUDIT_URL, {"action": "delete_selected", "_selected_action": [read.pk], "post": "yes"}
    )

    assert "delete_selected" not in listing.content.decode()
    assert change.status_code == 200
    assert not change.context["has_change_permission"]
    assert 'name="_save"' not in change.content.decode()
    assert (add.status_code, post.status_code, delete.status_code) == (403, 403, 403)
    assert bulk_delete.status_code in (200, 302)
    read.refresh_from_db()
    assert read.reader_username == "auditor"
