"""Staff read conversation transcripts here, read-only, and every read is recorded; the admin
never rewrites what was said. API tokens are listed too, without their hashes."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import Aggregate, Count, IntegerField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from chat.models import ApiToken, Conversation, Message, TranscriptRead

# Django's admin classes are not subscriptable at runtime (no django_stubs_ext monkeypatch),
# yet mypy strict wants their type parameters.
if TYPE_CHECKING:
    ConversationAdminBase = admin.ModelAdmin[Conversation]
    MessageAdminBase = admin.ModelAdmin[Message]
    MessageInlineBase = admin.TabularInline[Message, Conversation]
    ApiTokenAdminBase = admin.ModelAdmin[ApiToken]
    TranscriptReadAdminBase = admin.ModelAdmin[TranscriptRead]
else:
    ConversationAdminBase = MessageAdminBase = ApiTokenAdminBase = admin.ModelAdmin
    TranscriptReadAdminBase = admin.ModelAdmin
    MessageInlineBase = admin.TabularInline


class ReadOnly:
    """Nobody adds, changes or deletes these in the admin, superusers included: a
    conversation and what was said in it belong to the user who had it (and deleting
    here would bypass stopping a running reply); tokens are made by their owner, who alone
    ever sees the secret; the audit trail of reads is only ever appended to."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def per_conversation(aggregate: Aggregate) -> Subquery:
    """One aggregate over the outer row's messages, as a scalar subquery."""
    # values() before annotate() groups by conversation: one row, not one per message.
    messages = (
        Message.objects.filter(conversation=OuterRef("pk")).order_by().values("conversation")
    )
    return Subquery(
        messages.annotate(value=aggregate).values("value"), output_field=IntegerField()
    )


def with_transcript_stats(conversations: QuerySet[Conversation]) -> QuerySet[Conversation]:
    """Annotates the last reply's status, the message count and the tokens spent.

    Correlated subqueries rather than JOIN + GROUP BY: they run only for the page of rows
    shown (served by the conversation/created_at index), and a search that joins messages
    cannot multiply the sums.
    """
    last_reply = Message.objects.filter(
        conversation=OuterRef("pk"), role=Message.Role.ASSISTANT
    ).order_by("-created_at")
    return conversations.annotate(
        last_reply_status=Subquery(last_reply.values("status")[:1]),
        # No messages means no group and so NULL; a count should read 0 (and sort as 0).
        message_count=Coalesce(per_conversation(Count("pk")), 0),
        tokens_used=per_conversation(Sum("total_tokens")),
    )


def record_read(
    request: HttpRequest, conversation_id: uuid.UUID | str, via: TranscriptRead.Via
) -> None:
    """Note that the staff user behind `request` was shown this conversation's transcript."""
    reader = request.user
    assert reader.is_authenticated  # for the type checker: the admin let only staff in
    TranscriptRead.objects.create(
        reader=reader,
        reader_username=reader.get_username(),
        conversation_id=conversation_id,
        via=via,
    )


class MessageText:
    """A message's text as written: in a <pre>, so that code keeps its indentation (the
    admin shows a plain text field with its line breaks, but collapses the spaces)."""

    @admin.display(description="content")
    def text(self, message: Message) -> str:
        return format_html('<pre class="transcript-text">{}</pre>', message.content)


class MessageInline(MessageText, ReadOnly, MessageInlineBase):
    """The transcript, oldest first, for reading only."""

    model = Message
    ordering = ("created_at",)
    fields = ("role", "status", "text", "model", "tokens", "error", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    @admin.display(description="tokens")
    def tokens(self, message: Message) -> str:
        if message.total_tokens is None:
            return "-"
        estimated = " (estimated)" if message.usage_estimated else ""
        return (
            f"{message.total_tokens} = {message.prompt_tokens or 0} in"
            f" + {message.completion_tokens or 0} out{estimated}"
        )

    @admin.display(description="error")
    def error(self, message: Message) -> str:
        if not message.error_code:
            return "-"
        return f"{message.error_code}: {message.error_detail}"


@admin.register(Conversation)
class ConversationAdmin(ReadOnly, ConversationAdminBase):
    # --- Changelist ---
    list_display = (
        "__str__",
        "owner",
        "model",
        "last_reply_status",
        "message_count",
        "tokens_used",
        "created_at",
        "updated_at",
    )
    list_select_related = ("owner",)
    # An owner filter would list every user in the sidebar; search "=username" instead.
    list_filter = ("model", "created_at", "updated_at")
    # Searching message text joins messages; the changelist then dedupes with EXISTS.
    search_fields = ("title", "messages__content", "=owner__username")
    search_help_text = "Title, message text, or an exact username."
    ordering = ("-updated_at",)
    # Counting the whole unfiltered table on every search is the slowest query on the page.
    show_full_result_count = False

    # --- Change page: shown read-only, even to superusers, and each view recorded ---
    fields = ("id", "owner", "title", "model", "system_prompt", "created_at", "updated_at")
    readonly_fields = fields
    inlines = (MessageInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return with_transcript_stats(super().get_queryset(request))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The transcript; a page that was shown (not a redirect for a missing one) is a read."""
        response = super().change_view(request, object_id, form_url, extra_context)
        if response.status_code == 200:
            record_read(request, unquote(object_id), TranscriptRead.Via.CONVERSATION_PAGE)
        return response

    @admin.display(description="last reply", ordering="last_reply_status")
    def last_reply_status(self, conversation: Conversation) -> str:
        return getattr(conversation, "last_reply_status", None) or "-"

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, conversation: Conversation) -> int:
        count: int = getattr(conversation, "message_count", 0)
        return count

    @admin.display(description="tokens", ordering="tokens_used")
    def tokens_used(self, conversation: Conversation) -> int | None:
        tokens: int | None = getattr(conversation, "tokens_used", None)
        return tokens


@admin.register(Message)
class MessageAdmin(MessageText, ReadOnly, MessageAdminBase):
    """Every message across conversations, read-only: for finding, not editing."""

    list_display = ("__str__", "conversation", "role", "status", "model", "created_at")
    list_select_related = ("conversation",)
    list_filter = ("role", "status", "created_at")
    search_fields = ("content",)
    ordering = ("-created_at",)
    show_full_result_count = False
    raw_id_fields = ("conversation",)
    fields = (
        "conversation",
        "role",
        "status",
        "text",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "usage_estimated",
        "error_code",
        "error_detail",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """One message, whole: a read of its conversation's transcript too."""
        response = super().change_view(request, object_id, form_url, extra_context)
        if response.status_code == 200:
            messages = Message.objects.filter(pk=unquote(object_id))
            conversation_id = messages.values_list("conversation_id", flat=True).get()
            record_read(request, conversation_id, TranscriptRead.Via.MESSAGE_PAGE)
        return response


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnly, ApiTokenAdminBase):
    """Every user's API tokens, read-only; the hash of the secret is never shown."""

    list_display = ("name", "owner", "prefix", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("owner",)
    list_filter = ("created_at", "last_used_at", "revoked_at")
    search_fields = ("name", "prefix", "=owner__username")
    search_help_text = "Name, the token's first characters, or an exact username."
    ordering = ("-created_at",)
    fields = ("owner", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields


@admin.register(TranscriptRead)
class TranscriptReadAdmin(ReadOnly, TranscriptReadAdminBase):
    """Who read which transcript, and when: listed for audit, never added, changed or deleted."""

    list_display = ("read_at", "reader_username", "conversation_id", "via")
    list_filter = (("reader", admin.RelatedOnlyFieldListFilter), "read_at", "via")
    # A conversation id is looked up exactly (by its index); any other term is a username.
    search_fields = ("=reader_username",)
    search_help_text = "A conversation's id, or an exact username."
    ordering = ("-read_at",)
    show_full_result_count = False
    fields = ("read_at", "reader", "reader_username", "conversation_id", "via")
    readonly_fields = fields

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[TranscriptRead], search_term: str
    ) -> tuple[QuerySet[TranscriptRead], bool]:
        try:
            conversation_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(conversation_id=conversation_id), False
