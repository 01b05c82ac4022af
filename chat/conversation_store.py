"""The database steps on conversations as wholes: create, list and search, read, change
and delete. Each is scoped to the owner: another user's conversation is as missing as a
deleted one. They return rows and raise only `Refused`.

They run as the async ORM's own methods do (`sync_to_async`, no connection closing
around): HTTP requests, which use them, have Django's request cycle for that.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from asgiref.sync import sync_to_async
from django.db.models import Q
from django.utils import timezone

from chat import refusals
from chat.limits import take_conversations
from chat.models import Conversation
from chat.persistence import State, owned, together_or_each
from chat.search import matching

P = ParamSpec("P")
R = TypeVar("R")


def orm_step(function: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run on the ORM thread, as the async ORM's methods do."""
    return cast("Callable[P, Coroutine[Any, Any, R]]", sync_to_async(function))


# A position in the list, newest first: the last row's (updated_at, id). Unlike an offset
# it stays correct while conversations are created and bumped between pages.
Position = tuple[datetime, UUID]


def create_conversations(conversations: list[Conversation]) -> list[Conversation | Exception]:
    """Store new conversations with one INSERT (each alone if that fails), those their
    owners may still make this minute (`chat.limits`)."""
    return together_or_each(conversations, _create)


def _create(conversations: list[Conversation]) -> list[Conversation | Exception]:
    refused = take_conversations([conversation.owner_id for conversation in conversations])
    Conversation.objects.bulk_create(
        [c for c, refusal in zip(conversations, refused, strict=True) if refusal is None]
    )
    return [refusal or c for c, refusal in zip(conversations, refused, strict=True)]


@orm_step
def list_conversations(
    user_id: int, *, after: Position | None, text: str, limit: int
) -> list[Conversation]:
    """The user's conversations, newest first, after `after`, whose title or messages
    contain `text` (all when empty); at most `limit`."""
    conversations = owned(user_id).order_by("-updated_at", "-pk")
    if after is not None:
        updated_at, pk = after
        conversations = conversations.filter(
            Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, pk__lt=pk)
        )
    if text:
        conversations = matching(conversations, text)
    return list(conversations[:limit])


@orm_step
def transcript(user_id: int, conversation_id: UUID, *, latest: int | None = None) -> State:
    """The conversation and its messages, oldest first: all, or the `latest` ones."""
    conversation = _owned_conversation(user_id, conversation_id)
    messages = conversation.messages.order_by("-created_at")
    recent = messages[:latest] if latest is not None else messages
    return State(conversation, list(recent)[::-1])


@orm_step
def owner_of(conversation_id: UUID) -> int | None:
    """The conversation's owner, for work a process does on their behalf (a handover)."""
    owner: int | None = (
        Conversation.objects.filter(pk=conversation_id).values_list("owner_id", flat=True).first()
    )
    return owner


@orm_step
def current_state(conversation_id: UUID, *, latest: int) -> State | None:
    """The conversation and its `latest` messages, for watchers it has already let in (a
    resync, chat.fanout); None once it is deleted."""
    conversation = Conversation.objects.filter(pk=conversation_id).first()
    if conversation is None:
        return None
    recent = conversation.messages.order_by("-created_at")[:latest]
    return State(conversation, list(recent)[::-1])


@orm_step
def update_conversation(
    user_id: int, conversation_id: UUID, fields: dict[str, Any]
) -> Conversation:
    """Change the given fields (checked by the caller) and bump the conversation."""
    conversation = _owned_conversation(user_id, conversation_id)
    for name, value in fields.items():
        setattr(conversation, name, value)
    conversation.updated_at = timezone.now()
    conversation.save(update_fields=[*fields, "updated_at"])
    return conversation


@orm_step
def delete_conversation(user_id: int, conversation_id: UUID) -> None:
    """Delete the conversation and its messages."""
    deleted, _ = owned(user_id).filter(pk=conversation_id).delete()
    if not deleted:
        raise refusals.not_found()


@orm_step
def owns(user_id: int, conversation_id: UUID) -> bool:
    return owned(user_id).filter(pk=conversation_id).exists()


def _owned_conversation(user_id: int, conversation_id: UUID) -> Conversation:
    conversation = owned(user_id).filter(pk=conversation_id).first()
    if conversation is None:
        raise refusals.not_found()
    return conversation
