"""Conversations and their messages: the whole stored state of a chat; and the API tokens
that let scripts act for a user."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200)
    system_prompt = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            # The list page and the API: a user's conversations, newest first.
            models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent"),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.id}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=200, blank=True)
    # Sent by the client so that a retried "send" creates one message, not two.
    client_msg_id = models.UUIDField(null=True, blank=True, editable=False)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    # True when the server sent no usage and the counts are our estimate.
    usage_estimated = models.BooleanField(default=False)
    error_code = models.CharField(max_length=64, blank=True)
    error_detail = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="message_transcript"),
            models.Index(fields=["status"], name="message_status"),
            models.Index(fields=["role", "created_at"], name="message_role_recent"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_msg_id"],
                condition=models.Q(client_msg_id__isnull=False),
                name="message_client_msg_id_once",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"

    @property
    def usage(self) -> dict[str, int | bool] | None:
        if self.total_tokens is None:
            return None
        return {
            "prompt_tokens": self.prompt_tokens or 0,
            "completion_tokens": self.completion_tokens or 0,
            "total_tokens": self.total_tokens,
            "estimated": self.usage_estimated,
        }

    @property
    def error(self) -> dict[str, str] | None:
        if not self.error_code:
            return None
        return {"code": self.error_code, "detail": self.error_detail}


class UsageRecord(models.Model):
    """One per reply started: what the per-minute and per-day limits count. Kept when the
    reply itself is replaced (regenerate, edit), so replacing replies cannot reset them."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_records"
    )
    message_id = models.UUIDField(db_index=True)
    total_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["owner", "created_at"], name="usage_owner_recent")]

    def __str__(self) -> str:
        return f"{self.owner_id}: {self.total_tokens} tokens at {self.created_at:%Y-%m-%d %H:%M}"


class ApiToken(models.Model):
    """A personal token for scripts (`Authorization: Bearer chat_...`). Only a hash of the
    secret is stored: the secret itself is shown once, when the token is made."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    # The secret's first characters: enough to tell tokens apart in a list, useless to guess.
    prefix = models.CharField(max_length=16, editable=False)
    # sha256 of the secret, hex. A plain hash suffices: the secret is 32 random bytes.
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The settings page: a user's tokens, newest first.
            models.Index(fields=["owner", "-created_at"], name="api_token_owner_recent"),
        ]
        constraints = [
            # Every API request looks its token up by this hash.
            models.UniqueConstraint(fields=["key_hash"], name="api_token_key_hash_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}...)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class TranscriptRead(models.Model):
    """One staff read of a conversation's transcript in the admin: who, when, which, where.
    Append-only; it outlives both the conversation and the reader's account."""

    class Via(models.TextChoices):
        CONVERSATION_PAGE = "conversation_page", "conversation page"
        MESSAGE_PAGE = "message_page", "message page"

    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        related_name="transcript_reads",
        editable=False,
    )
    # The name at the time of the read: still says who once the account is renamed or gone.
    reader_username = models.CharField(max_length=150, editable=False)
    # A value, not a foreign key: deleting the conversation must keep who read it.
    conversation_id = models.UUIDField(editable=False)
    via = models.CharField(max_length=32, choices=Via.choices, editable=False)
    read_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-read_at"]
        indexes = [
            # The admin's list: every read, newest first.
            models.Index(fields=["-read_at"], name="transcript_read_recent"),
            # Who read this conversation, newest first.
            models.Index(
                fields=["conversation_id", "-read_at"], name="transcript_read_conversation"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.reader_username} read {self.conversation_id} at {self.read_at:%Y-%m-%d %H:%M}"
        )
