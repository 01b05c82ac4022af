"""The database steps of a chat, each one short and each scoped to the conversation's owner.

Steps that need a transaction are one sync function each, run on the ORM thread through
`database_sync_to_async`: one thread hop per step, not one per query.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from chat import llm
from chat.models import Conversation, Message, UsageRecord

P = ParamSpec("P")
R = TypeVar("R")


def db_step(function: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run on the ORM thread, closing connections that broke or aged out (PostgreSQL
    restarts, the pool's recycling) before and after: the async ORM's own methods don't."""
    return cast("Callable[P, Coroutine[Any, Any, R]]", database_sync_to_async(function))


class Refused(Exception):
    """A request we will not serve, with the error code the client sees."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


NOT_FOUND = Refused("not_found", "No such conversation.")


@dataclass
class ReplyPlan:
    """What a reply needs once its messages are stored: whom it answers and with what."""

    conversation: Conversation
    assistant_message: Message
    prompt: list[dict[str, str]]
    user_message: Message | None = None
    # The messages a rewrite of history (edit, regenerate) removed.
    removed: list[UUID] = field(default_factory=list)


@dataclass
class State:
    conversation: Conversation
    messages: list[Message]


# --- Reading ----------------------------------------------------------------------------


@db_step
def load_state(user_id: int, conversation_id: UUID, *, reply_running: bool) -> State | None:
    """The conversation and its recent messages, or None if it is not the user's."""
    conversation = owned(user_id).filter(pk=conversation_id).first()
    if conversation is None:
        return None
    recent = conversation.messages.order_by("-created_at")[: settings.CHAT_STATE_MESSAGES]
    messages = list(reversed(recent))
    if not reply_running and _streaming(messages):
        _settle_orphans(conversation, holding_reservation=False)
        messages = list(reversed(recent.all()))
    return State(conversation, messages)


@db_step
def owns(user_id: int, conversation_id: UUID) -> bool:
    return owned(user_id).filter(pk=conversation_id).exists()


@db_step
def find_sent(user_id: int, conversation_id: UUID, client_msg_id: UUID) -> Message | None:
    """The message a send with this `client_msg_id` posted, if any."""
    return Message.objects.filter(
        conversation__in=owned(user_id).filter(pk=conversation_id), client_msg_id=client_msg_id
    ).first()


def owned(user_id: int) -> QuerySet[Conversation]:
    """The conversations of a user who may still use them: a deactivated account's open
    sockets lose access at their next frame."""
    return Conversation.objects.filter(owner_id=user_id, owner__is_active=True)


# --- Starting a reply -------------------------------------------------------------------


@db_step
def post_user_message(
    user_id: int, conversation_id: UUID, content: str, client_msg_id: UUID | None
) -> ReplyPlan | Message:
    """Store the user's message and an empty reply; the existing message on a retried send."""
    with transaction.atomic():
        conversation = _lock_conversation(user_id, conversation_id)
        # The whole history, read once: the prompt, the retry check and orphans need it.
        history = list(conversation.messages.order_by("created_at"))
        if client_msg_id is not None:
            for message in history:
                if message.client_msg_id == client_msg_id:
                    return message
        _check_limits(user_id)
        if _streaming(history):
            _settle_orphans(conversation, holding_reservation=True)
        now = timezone.now()
        user_message = Message(
            conversation=conversation,
            role=Message.Role.USER,
            content=content,
            client_msg_id=client_msg_id,
            created_at=now,
            updated_at=now,
        )
        if not conversation.title:
            conversation.title = content.strip().splitlines()[0][:80]
        plan = _plan_reply(conversation, history, [user_message], now)
        plan.user_message = user_message
        return plan


@db_step
def regenerate(user_id: int, conversation_id: UUID) -> ReplyPlan:
    """Remove the last reply and plan a new one for the same question."""
    with transaction.atomic():
        conversation = _lock_conversation(user_id, conversation_id)
        history = list(conversation.messages.order_by("created_at"))
        if _streaming(history):
            _settle_orphans(conversation, holding_reservation=True)
        if not history or history[-1].role != Message.Role.ASSISTANT:
            raise Refused("bad_request", "There is no reply to regenerate.")
        _check_limits(user_id)
        last = history.pop()
        Message.objects.filter(pk=last.pk).delete()
        plan = _plan_reply(conversation, history, [], timezone.now())
        plan.removed = [last.pk]
        return plan


@db_step
def edit(user_id: int, conversation_id: UUID, message_id: UUID, content: str) -> ReplyPlan:
    """Change a user message, drop everything after it, and plan a reply to it."""
    with transaction.atomic():
        conversation = _lock_conversation(user_id, conversation_id)
        history = list(conversation.messages.order_by("created_at"))
        if _streaming(history):
            _settle_orphans(conversation, holding_reservation=True)
        position = next(
            (i for i, m in enumerate(history) if m.pk == message_id and m.role == "user"), None
        )
        if position is None:
            raise Refused("not_found", "No such message of yours in this conversation.")
        _check_limits(user_id)
        message, later = history[position], history[position + 1 :]
        removed = [m.pk for m in later]
        Message.objects.filter(pk__in=removed).delete()
        now = timezone.now()
        message.content = content
        message.updated_at = now
        message.save(update_fields=["content", "updated_at"])
        plan = _plan_reply(conversation, history[: position + 1], [], now)
        plan.user_message = message
        plan.removed = removed
        return plan


def _lock_conversation(user_id: int, conversation_id: UUID) -> Conversation:
    # The row lock serialises the replies of one conversation across processes.
    conversation = (
        owned(user_id).select_for_update(of=("self",)).filter(pk=conversation_id).first()
    )
    if conversation is None:
        raise NOT_FOUND
    return conversation


def _plan_reply(
    conversation: Conversation, history: list[Message], new: list[Message], now: datetime
) -> ReplyPlan:
    """Store `new` messages and an empty streaming reply after them; build the prompt."""
    assistant = Message(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model=conversation.model,
        # After the user's message even when both are stored in the same microsecond.
        created_at=now + timedelta(microseconds=1),
        updated_at=now,
    )
    Message.objects.bulk_create([*new, assistant])
    UsageRecord.objects.create(
        owner_id=conversation.owner_id, message_id=assistant.pk, created_at=now
    )
    conversation.updated_at = now
    conversation.save(update_fields=["title", "updated_at"])
    turns = [(m.role, m.content) for m in [*history, *new] if m.content]
    prompt = llm.build_prompt(conversation.system_prompt, turns, settings.CHAT_CONTEXT_TOKENS)
    return ReplyPlan(conversation, assistant, prompt)


def _streaming(messages: list[Message]) -> bool:
    return any(m.status == Message.Status.STREAMING for m in messages)


def _settle_orphans(conversation: Conversation, *, holding_reservation: bool) -> None:
    """Mark replies left `streaming` by a process that died as `interrupted`.

    With one process the local registry knows every running reply, so a streaming message
    nobody runs is an orphan. With several (a Redis channel layer), a reply is an orphan
    once its checkpoints have stopped for longer than any upstream read could take.
    """
    streaming = conversation.messages.filter(status=Message.Status.STREAMING)
    if settings.REDIS_URL:
        stale_before = timezone.now() - timedelta(seconds=settings.CHAT_STALE_REPLY_SECONDS)
        if holding_reservation and streaming.filter(updated_at__gte=stale_before).exists():
            raise Refused("busy", "A reply is still being written; stop it or wait.")
        streaming = streaming.filter(updated_at__lt=stale_before)
    streaming.update(
        status=Message.Status.INTERRUPTED,
        error_code=llm.INTERRUPTED.code,
        error_detail=llm.INTERRUPTED.detail,
        updated_at=timezone.now(),
    )


def _check_limits(user_id: int) -> None:
    """Replies started per minute and tokens per day, whatever started them."""
    now = timezone.now()
    records = UsageRecord.objects.filter(owner_id=user_id)
    if records.filter(created_at__gte=now - timedelta(minutes=1)).count() >= (
        settings.CHAT_MESSAGES_PER_MINUTE
    ):
        raise Refused("rate_limited", "You are sending messages too fast; wait a minute.")
    if settings.CHAT_TOKENS_PER_DAY:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        today = records.filter(created_at__gte=midnight)
        used = today.aggregate(used=Sum("total_tokens"))["used"]
        if (used or 0) >= settings.CHAT_TOKENS_PER_DAY:
            raise Refused("quota_exceeded", "You have used today's tokens; come back tomorrow.")


# --- While and after a reply streams -------------------------------------------------------


@db_step
def checkpoint(contents: dict[UUID, str], alive: list[UUID]) -> None:
    """Save the partial texts of streaming replies (one transaction for all), so that a
    crash loses at most a checkpoint interval of them; and mark the `alive` ones as still
    running, so other processes do not take them for orphans. A reply that ended
    meanwhile is not `streaming` any more, and keeps its final text."""
    now = timezone.now()
    streaming = Message.objects.filter(status=Message.Status.STREAMING)
    with transaction.atomic():
        for message_id, content in contents.items():
            streaming.filter(pk=message_id).update(content=content, updated_at=now)
        if alive:
            streaming.filter(pk__in=alive).update(updated_at=now)


@db_step
def finish(
    message_id: UUID, content: str, status: str, usage: llm.Usage, error: llm.LLMError | None
) -> None:
    """Write the reply whole, with the status that says how it ended, and count its tokens."""
    with transaction.atomic():
        UsageRecord.objects.filter(message_id=message_id).update(total_tokens=usage.total_tokens)
        Message.objects.filter(pk=message_id).update(
            content=content,
            status=status,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            usage_estimated=usage.estimated,
            error_code=error.code if error else "",
            error_detail=error.detail if error else "",
            updated_at=timezone.now(),
        )
