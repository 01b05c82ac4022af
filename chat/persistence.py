"""The database steps of a chat's replies, each one short and each scoped to the
conversation's owner: opening a conversation, posting, regenerating, editing, saving
streaming text and final writes. They return rows and raise only `Refused`.

Steps that need a transaction are one sync function each, run on the ORM thread through
`database_sync_to_async`: one thread hop per step, not one per query. Steps that many
users' requests share (`chat.batching`) answer one result per request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import auth
from django.db import transaction
from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber
from django.http import HttpRequest
from django.utils import timezone

from chat import refusals
from chat.limits import Allowance, ReplyLimits
from chat.models import Conversation, Message, UsageRecord
from chat.refusals import Refused
from chat.row_updates import update_rows
from chat.text import estimate_prompt_tokens

P = ParamSpec("P")
R = TypeVar("R")

# What a reply ends with when its process stopped (or died) under it.
INTERRUPTED_CODE = "interrupted"
INTERRUPTED_DETAIL = "The server stopped while writing this reply."

Turn = tuple[str, str]  # (role, content), as the prompt is built from them


def db_step(function: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run on the ORM thread, closing connections that broke or aged out (PostgreSQL
    restarts, the pool's recycling) before and after: the async ORM's own methods don't."""
    return cast("Callable[P, Coroutine[Any, Any, R]]", database_sync_to_async(function))


@dataclass
class ReplyPlan:
    """What a reply needs once its messages are stored: whom it answers and with what."""

    conversation: Conversation
    assistant_message: Message
    # The turns it answers, oldest first, the question last.
    history: list[Turn]
    user_message: Message | None = None
    # The messages a rewrite of history (edit, regenerate) removed.
    removed: list[UUID] = field(default_factory=list)
    # The most tokens the reply may write (None: the server's default).
    max_tokens: int | None = None
    # The reply goes on in `assistant_message`, after the text it holds (a continue).
    continued: bool = False
    # The title this send gave an untitled conversation (its message's first line), until
    # the model writes a better one (chat.titles); None when it had a title already.
    provisional_title: str | None = None


@dataclass
class State:
    conversation: Conversation
    messages: list[Message]


# --- Opening a conversation ----------------------------------------------------------


@dataclass(frozen=True)
class Opening:
    """A socket that opens: the session key of its cookie and the conversation it asks for."""

    session_key: str
    conversation_id: UUID


Opened = tuple[int | None, State | None]


@db_step
def open_conversations(openings: list[Opening]) -> list[Opened | Exception]:
    """For each socket that opens: the user its session logs in (None: refuse it), and the
    state of the conversation if it is theirs (None: not found). Each session is checked
    on its own; the conversations and their latest messages are read with one query each
    for all. A session the database cannot read fails that socket alone."""
    users: list[int | None | Exception] = []
    for opening in openings:
        try:
            users.append(user_of_session(opening.session_key))
        except Exception as exc:
            users.append(exc)
    ids = [o.conversation_id for o, user in zip(openings, users, strict=True) if _is_id(user)]
    conversations = {c.pk: c for c in Conversation.objects.filter(pk__in=ids)}
    latest = _latest_messages(list(conversations))
    results: list[Opened | Exception] = []
    for opening, user_id in zip(openings, users, strict=True):
        conversation = conversations.get(opening.conversation_id)
        if isinstance(user_id, Exception):
            results.append(user_id)
        elif user_id is None:
            results.append((None, None))
        # `user_of_session` has just checked that the user may log in: the owner's id is
        # all there is left to compare.
        elif conversation is None or conversation.owner_id != user_id:
            results.append((user_id, None))
        else:
            results.append((user_id, State(conversation, latest.get(conversation.pk, []))))
    return results


def _is_id(user: int | None | Exception) -> bool:
    return isinstance(user, int)


@db_step
def interrupt_streaming(message_ids: list[str]) -> list[Message]:
    """Mark those of the replies that are still `streaming` as `interrupted`, as they were
    last saved (their process died, chat.heartbeats); the ones it marked."""
    with transaction.atomic():
        streaming = list(
            Message.objects.select_for_update().filter(
                pk__in=message_ids, status=Message.Status.STREAMING
            )
        )
        now = timezone.now()
        for message in streaming:
            message.status = Message.Status.INTERRUPTED
            message.error_code, message.error_detail = INTERRUPTED_CODE, INTERRUPTED_DETAIL
            message.updated_at = now
        Message.objects.bulk_update(
            streaming, ["status", "error_code", "error_detail", "updated_at"]
        )
    return streaming


@db_step
def settle_orphans(conversation_id: UUID, running: set[UUID]) -> list[Message]:
    """Mark the conversation's replies that no process runs any more as `interrupted`
    (`running`: the replies this process runs, never settled); its latest messages after."""
    conversation = Conversation.objects.get(pk=conversation_id)
    _settle_orphans(conversation, holding_reservation=False, running=running)
    return _latest_messages([conversation_id]).get(conversation_id, [])


def _latest_messages(conversation_ids: list[UUID]) -> dict[UUID, list[Message]]:
    """The latest CHAT_STATE_MESSAGES messages of each conversation, oldest first."""
    limit = settings.CHAT_STATE_MESSAGES
    if len(conversation_ids) == 1:
        # One conversation (one tab opening): a plain query, three times cheaper than
        # the window below.
        [conversation_id] = conversation_ids
        recent = Message.objects.filter(conversation_id=conversation_id)
        return {conversation_id: list(reversed(recent.order_by("-created_at")[:limit]))}
    rank = Window(RowNumber(), partition_by=F("conversation_id"), order_by=F("created_at").desc())
    latest = (
        Message.objects.filter(conversation_id__in=conversation_ids)
        .annotate(rank=rank)
        .filter(rank__lte=limit)
        .order_by("created_at")
    )
    by_conversation: dict[UUID, list[Message]] = {}
    for message in latest:
        by_conversation.setdefault(message.conversation_id, []).append(message)
    return by_conversation


def user_of_session(session_key: str) -> int | None:
    """The id of the user a session logs in, with Django's own checks: the user exists, is
    active, and has not changed their password since (`auth.get_user`; a request object is
    all it needs to carry the session)."""
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(request)
    return user.pk if user.is_authenticated else None


@db_step
def find_sent(user_id: int, conversation_id: UUID, client_msg_id: UUID) -> Message | None:
    """The message a send with this `client_msg_id` posted, if any."""
    return Message.objects.filter(
        conversation__in=owned(user_id).filter(pk=conversation_id), client_msg_id=client_msg_id
    ).first()


@db_step
def message(message_id: UUID) -> Message:
    return Message.objects.get(pk=message_id)


def owned(user_id: int) -> QuerySet[Conversation]:
    """The conversations of a user who may still use them: a deactivated account's open
    sockets lose access at their next frame."""
    return Conversation.objects.filter(owner_id=user_id, owner__is_active=True)


# --- Starting a reply -------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """A user's message for a conversation."""

    user_id: int
    conversation_id: UUID
    content: str
    client_msg_id: UUID | None = None


@db_step
def post_user_messages(sends: list[Send]) -> list[ReplyPlan | Message | Exception]:
    """Store each user's message and an empty reply (the existing message for a retried
    send), in one transaction: a result per send, in order. A send that may not be served
    gets its `Refused` and costs the others nothing."""
    return together_or_each(sends, _post)


def _post(sends: list[Send]) -> list[ReplyPlan | Message | Exception]:
    # The users' rows first, then the conversations': every step locks in that order.
    limits = ReplyLimits({send.user_id for send in sends})
    ids = sorted({send.conversation_id for send in sends})
    # Row locks, taken in one order, serialise each conversation's replies across processes.
    locked = (
        Conversation.objects.select_for_update(of=("self",))
        .filter(pk__in=ids, owner__is_active=True)
        .order_by("pk")
    )
    conversations = {conversation.pk: conversation for conversation in locked}
    # Whole histories, read once: the prompts, the retry checks and orphans need them.
    histories: dict[UUID, list[Message]] = {pk: [] for pk in conversations}
    messages = Message.objects.filter(conversation__in=list(conversations))
    for message in messages.order_by("created_at"):
        histories[message.conversation_id].append(message)
    now = timezone.now()
    # A result per send; the sends that start a reply get theirs once all are stored.
    results: list[ReplyPlan | Message | Exception | None] = []
    starts: dict[int, ReplyStart] = {}  # by index in results
    named: set[int] = set()  # the sends that titled their conversation
    for send in sends:
        conversation = conversations.get(send.conversation_id)
        if conversation is None or conversation.owner_id != send.user_id:
            results.append(refusals.not_found())
            continue
        history = histories[conversation.pk]
        if retried := _sent_before(history, send.client_msg_id):
            results.append(retried)
            continue
        try:
            if _streaming(history):
                _settle_orphans(conversation, holding_reservation=True)
            allowance = limits.take(send.user_id, _prompt_tokens(conversation, history, send))
        except Refused as refused:
            results.append(refused)
            continue
        user_message = Message(
            conversation=conversation,
            role=Message.Role.USER,
            content=send.content,
            client_msg_id=send.client_msg_id,
            created_at=now,
            updated_at=now,
        )
        if not conversation.title:
            conversation.title = send.content.strip().splitlines()[0][:80]
            named.add(len(results))
        starts[len(results)] = ReplyStart(conversation, history, [user_message], allowance)
        results.append(None)
    plans = _store_replies(list(starts.values()), now)
    for (index, start), plan in zip(starts.items(), plans, strict=True):
        plan.user_message = start.new[0]
        if index in named:
            plan.provisional_title = plan.conversation.title
        results[index] = plan
    answered = [result for result in results if result is not None]
    assert len(answered) == len(sends)  # every send has its result, in its place
    return answered


def _sent_before(history: list[Message], client_msg_id: UUID | None) -> Message | None:
    if client_msg_id is None:
        return None
    return next((m for m in history if m.client_msg_id == client_msg_id), None)


@db_step
def regenerate(user_id: int, conversation_id: UUID) -> ReplyPlan:
    """Remove the last reply and plan a new one for the same question."""
    with transaction.atomic():
        limits = ReplyLimits({user_id})
        conversation = _lock_conversation(user_id, conversation_id)
        history = list(conversation.messages.order_by("created_at"))
        if _streaming(history):
            _settle_orphans(conversation, holding_reservation=True)
        if not history or history[-1].role != Message.Role.ASSISTANT:
            raise refusals.bad_request("There is no reply to regenerate.")
        last = history.pop()
        allowance = limits.take(user_id, _prompt_tokens(conversation, history))
        Message.objects.filter(pk=last.pk).delete()
        start = ReplyStart(conversation, history, [], allowance)
        [plan] = _store_replies([start], timezone.now())
        plan.removed = [last.pk]
        return plan


@db_step
def continue_reply(user_id: int, conversation_id: UUID) -> ReplyPlan:
    """Plan the rest of the conversation's last reply, `interrupted` (its process stopped
    or died): it streams again in the same message, after the text it has."""
    with transaction.atomic():
        limits = ReplyLimits({user_id})
        conversation = _lock_conversation(user_id, conversation_id)
        history = list(conversation.messages.order_by("created_at"))
        if _streaming(history):
            _settle_orphans(conversation, holding_reservation=True)
            history = list(conversation.messages.order_by("created_at"))
        last = history[-1] if history else None
        if (
            last is None
            or last.role != Message.Role.ASSISTANT
            or last.status != Message.Status.INTERRUPTED
        ):
            raise refusals.bad_request("There is no interrupted reply to continue.")
        allowance = limits.take(user_id, _prompt_tokens(conversation, history))
        now = timezone.now()
        last.status = Message.Status.STREAMING
        last.error_code = last.error_detail = ""
        last.updated_at = now
        last.save(update_fields=["status", "error_code", "error_detail", "updated_at"])
        # What it used before, and what it may use now, until its final write counts.
        reserved = (last.total_tokens or 0) + allowance.reserved_tokens
        if not UsageRecord.objects.filter(message_id=last.pk).update(total_tokens=reserved):
            UsageRecord.objects.create(
                owner_id=conversation.owner_id,
                message_id=last.pk,
                total_tokens=reserved,
                created_at=now,
            )
        conversation.updated_at = now
        conversation.save(update_fields=["updated_at"])
        turns = [(m.role, m.content) for m in history if m.content]
        return ReplyPlan(
            conversation, last, turns, max_tokens=allowance.max_tokens, continued=True
        )


@db_step
def edit(user_id: int, conversation_id: UUID, message_id: UUID, content: str) -> ReplyPlan:
    """Change a user message, drop everything after it, and plan a reply to it."""
    with transaction.atomic():
        limits = ReplyLimits({user_id})
        conversation = _lock_conversation(user_id, conversation_id)
        history = list(conversation.messages.order_by("created_at"))
        if _streaming(history):
            _settle_orphans(conversation, holding_reservation=True)
        position = next(
            (i for i, m in enumerate(history) if m.pk == message_id and m.role == "user"), None
        )
        if position is None:
            raise refusals.not_found("No such message of yours in this conversation.")
        message, later = history[position], history[position + 1 :]
        message.content = content
        allowance = limits.take(user_id, _prompt_tokens(conversation, history[: position + 1]))
        removed = [m.pk for m in later]
        Message.objects.filter(pk__in=removed).delete()
        now = timezone.now()
        message.updated_at = now
        message.save(update_fields=["content", "updated_at"])
        start = ReplyStart(conversation, history[: position + 1], [], allowance)
        [plan] = _store_replies([start], now)
        plan.user_message = message
        plan.removed = removed
        return plan


def _lock_conversation(user_id: int, conversation_id: UUID) -> Conversation:
    # The row lock serialises the replies of one conversation across processes.
    conversation = (
        owned(user_id).select_for_update(of=("self",)).filter(pk=conversation_id).first()
    )
    if conversation is None:
        raise refusals.not_found()
    return conversation


@dataclass
class ReplyStart:
    """A reply about to start: its conversation, the history it answers, and the messages
    to store before it (the user's new one, if any)."""

    conversation: Conversation
    history: list[Message]
    new: list[Message]
    allowance: Allowance


def _store_replies(starts: list[ReplyStart], now: datetime) -> list[ReplyPlan]:
    """Store each start's new messages and an empty streaming reply after them, with one
    INSERT per table for all of them."""
    plans, messages, records = [], [], []
    for start in starts:
        conversation = start.conversation
        assistant = Message(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            model=conversation.model,
            # After the user's message even when both are stored in the same microsecond.
            created_at=now + timedelta(microseconds=1),
            updated_at=now,
        )
        messages += [*start.new, assistant]
        # The tokens it may use, reserved until its final write counts what it used.
        reserved = start.allowance.reserved_tokens
        records.append(
            UsageRecord(
                owner_id=conversation.owner_id,
                message_id=assistant.pk,
                total_tokens=reserved,
                created_at=now,
            )
        )
        conversation.updated_at = now
        turns = [(m.role, m.content) for m in [*start.history, *start.new] if m.content]
        plan = ReplyPlan(conversation, assistant, turns, max_tokens=start.allowance.max_tokens)
        plans.append(plan)
    if plans:
        Message.objects.bulk_create(messages)
        UsageRecord.objects.bulk_create(records)
        update_rows(
            Conversation,
            ["title", "updated_at"],
            [(p.conversation.title, now, p.conversation.pk) for p in plans],
        )
    return plans


def _streaming(messages: list[Message]) -> bool:
    return any(m.status == Message.Status.STREAMING for m in messages)


def _settle_orphans(
    conversation: Conversation, *, holding_reservation: bool, running: set[UUID] | None = None
) -> None:
    """Mark replies left `streaming` by a process that died as `interrupted`; never one of
    the `running` replies of this process.

    With one process the local registry knows every running reply, so a streaming message
    nobody runs is an orphan (a caller that holds the conversation's reservation knows none
    runs). With several (a Redis channel layer), a reply is an orphan once its checkpoints
    have stopped for longer than any upstream read could take.
    """
    streaming = conversation.messages.filter(status=Message.Status.STREAMING)
    if running:
        streaming = streaming.exclude(pk__in=running)
    if settings.REDIS_URL:
        stale_before = timezone.now() - timedelta(seconds=settings.CHAT_STALE_REPLY_SECONDS)
        if holding_reservation and streaming.filter(updated_at__gte=stale_before).exists():
            raise refusals.busy()
        streaming = streaming.filter(updated_at__lt=stale_before)
    streaming.update(
        status=Message.Status.INTERRUPTED,
        error_code=INTERRUPTED_CODE,
        error_detail=INTERRUPTED_DETAIL,
        updated_at=timezone.now(),
    )


def _prompt_tokens(
    conversation: Conversation, history: list[Message], send: Send | None = None
) -> int:
    """The tokens of the prompt a reply will be sent, estimated (within the budget)."""
    texts = [conversation.system_prompt, *(m.content for m in history if m.content)]
    if send is not None:
        texts.append(send.content)
    estimate = estimate_prompt_tokens([text for text in texts if text])
    budget = settings.CHAT_CONTEXT_TOKENS
    return min(estimate, budget) if budget else estimate


# --- While and after a reply streams -------------------------------------------------------


@db_step
def checkpoint(contents: dict[UUID, str], alive: list[UUID]) -> set[UUID]:
    """Save the partial texts of streaming replies (one transaction for all), so that a
    crash loses at most a checkpoint interval of them; and mark the `alive` ones as still
    running, so other processes do not take them for orphans. A reply that ended
    meanwhile is not `streaming` any more, and keeps its final text.

    One transaction for all; if it fails, one for each, so that one reply the database
    refuses costs the others nothing. Returns the replies whose text was not saved."""
    now = timezone.now()
    streaming = Message.Status.STREAMING

    def save(rows: list[tuple[str, datetime, UUID]]) -> list[None]:
        update_rows(Message, ["content", "updated_at"], rows, only_if={"status": streaming})
        return [None] * len(rows)

    rows = [(content, now, message_id) for message_id, content in contents.items()]
    results = together_or_each(rows, save) if rows else []
    if alive:
        Message.objects.filter(pk__in=alive, status=streaming).update(updated_at=now)
    return {row[2] for row, result in zip(rows, results, strict=True) if result is not None}


@dataclass(frozen=True)
class Final:
    """How a reply ended: its whole text, status, usage and error."""

    message_id: UUID
    content: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool = False
    error_code: str = ""
    error_detail: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@db_step
def finish_all(finals: list[Final]) -> list[None | Exception]:
    """Write each reply whole, with the status that says how it ended, and count its
    tokens; all in one transaction, or each in its own if that fails."""
    return together_or_each(finals, _write_finals)


def _write_finals(finals: list[Final]) -> list[None | Exception]:
    now = timezone.now()
    counts = [(final.total_tokens, final.message_id) for final in finals]
    update_rows(UsageRecord, ["total_tokens"], counts, by="message_id")
    fields = ["content", "status", "prompt_tokens", "completion_tokens", "total_tokens"]
    fields += ["usage_estimated", "error_code", "error_detail", "updated_at"]
    rows = [
        (
            final.content,
            final.status,
            final.prompt_tokens,
            final.completion_tokens,
            final.total_tokens,
            final.usage_estimated,
            final.error_code,
            final.error_detail,
            now,
            final.message_id,
        )
        for final in finals
    ]
    update_rows(Message, fields, rows)
    return [None] * len(finals)


@db_step
def retitle(
    owner_id: int, conversation_id: UUID, provisional: str, title: str
) -> Conversation | None:
    """Give the conversation `title` in place of the `provisional` one its first message
    gave it: the conversation, retitled; None if it was renamed since (a title the user
    chose is never replaced) or deleted. Not a change of the user's: it keeps its place
    in the list (`updated_at`)."""
    titled = owned(owner_id).filter(pk=conversation_id, title=provisional)
    if not titled.update(title=title):
        return None
    return Conversation.objects.filter(pk=conversation_id).first()


# --- Batches ------------------------------------------------------------------------------

Item = TypeVar("Item")


def together_or_each(
    items: list[Item], write: Callable[[list[Item]], list[R]]
) -> list[R | Exception]:
    """`write` all items in one transaction; if that fails, each in a transaction of its
    own, so that one bad item (a broken row, a constraint) costs the others nothing."""
    try:
        with transaction.atomic():
            return list(write(items))
    except Exception:
        if len(items) == 1:
            raise
    results: list[R | Exception] = []
    for item in items:
        try:
            with transaction.atomic():
                written = write([item])
        except Exception as exc:  # raised by the write or by its commit
            results.append(exc)
        else:
            results += written
    return results
