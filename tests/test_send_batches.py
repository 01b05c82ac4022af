"""Sends, final writes and socket openings handled many at once: each item gets its own
result, and one bad item costs the others nothing (`chat.persistence`, issue 4)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError
from django.test import Client

from chat import persistence
from chat.models import Conversation, Message, UsageRecord
from chat.refusals import Refused

post_all = persistence.post_user_messages.func  # type: ignore[attr-defined]
finish_all = persistence.finish_all.func  # type: ignore[attr-defined]
open_all = persistence.open_conversations.func  # type: ignore[attr-defined]


def test_one_batch_answers_each_send(
    user: User, other_user: User, make_conversation: Callable[..., Conversation]
) -> None:
    mine, theirs, again = (
        make_conversation(user),
        make_conversation(other_user),
        make_conversation(user),
    )
    retried_id = uuid.uuid4()
    first = post_all([persistence.Send(user.pk, again.id, "before", retried_id)])[0]
    assert isinstance(first, persistence.ReplyPlan)

    results = post_all(
        [
            persistence.Send(user.pk, mine.id, "hello\nsecond line", uuid.uuid4()),
            persistence.Send(user.pk, theirs.id, "not mine"),
            persistence.Send(other_user.pk, theirs.id, "theirs"),
            persistence.Send(user.pk, again.id, "before", retried_id),
        ]
    )

    plan, refused, other_plan, retried = results
    assert isinstance(plan, persistence.ReplyPlan) and isinstance(
        other_plan, persistence.ReplyPlan
    )
    assert plan.history[-1] == ("user", "hello\nsecond line")
    assert other_plan.history[-1] == ("user", "theirs")
    assert isinstance(refused, Refused) and refused.code == "not_found"
    assert first.user_message is not None
    assert isinstance(retried, Message) and retried.pk == first.user_message.pk
    mine.refresh_from_db()
    assert mine.title == "hello"
    assert list(mine.messages.values_list("role", "status")) == [
        ("user", "complete"),
        ("assistant", "streaming"),
    ]
    # Nothing was stored for the refused send or the retry.
    assert theirs.messages.filter(content="not mine").count() == 0
    assert again.messages.count() == 2
    assert UsageRecord.objects.filter(owner=user).count() == 2


def test_the_rate_limit_counts_sends_of_the_same_batch(
    user: User, make_conversation: Callable[..., Conversation], settings: Any
) -> None:
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    sends = [persistence.Send(user.pk, make_conversation(user).id, "hi") for _ in range(3)]
    results = post_all(sends)
    assert [type(r).__name__ for r in results] == ["ReplyPlan", "ReplyPlan", "Refused"]
    assert results[2].code == "rate_limited"
    assert Message.objects.filter(role="assistant").count() == 2


def test_final_writes_of_many_replies(
    user: User, make_conversation: Callable[..., Conversation]
) -> None:
    plans = post_all(
        [persistence.Send(user.pk, make_conversation(user).id, "hi") for _ in range(3)]
    )
    ids = [plan.assistant_message.pk for plan in plans]
    results = finish_all(
        [
            persistence.Final(ids[0], "done", "complete", 5, 7),
            persistence.Final(ids[1], "par", "stopped", 5, 7),
            persistence.Final(ids[2], "", "failed", 5, 7, False, "upstream_error", "500"),
        ]
    )
    assert results == [None, None, None]
    rows = {m.pk: m for m in Message.objects.filter(pk__in=ids)}
    assert [(rows[i].content, rows[i].status, rows[i].total_tokens) for i in ids] == [
        ("done", "complete", 12),
        ("par", "stopped", 12),
        ("", "failed", 12),
    ]
    assert rows[ids[2]].error == {"code": "upstream_error", "detail": "500"}
    assert (
        list(UsageRecord.objects.filter(message_id__in=ids).values_list("total_tokens", flat=True))
        == [12] * 3
    )


def test_checkpoints_skip_replies_that_ended(
    user: User, make_conversation: Callable[..., Conversation]
) -> None:
    plans = post_all(
        [persistence.Send(user.pk, make_conversation(user).id, "hi") for _ in range(2)]
    )
    running, ended = (plan.assistant_message.pk for plan in plans)
    finish_all([persistence.Final(ended, "final", "complete", 1, 1)])
    persistence.checkpoint.func({running: "so far", ended: "stale"}, [])  # type: ignore[attr-defined]
    assert Message.objects.get(pk=running).content == "so far"
    assert Message.objects.get(pk=ended).content == "final"


@pytest.mark.django_db(transaction=True)
def test_a_failing_item_fails_alone(
    user: User, make_conversation: Callable[..., Conversation]
) -> None:
    """When the batch's transaction fails, each item is written on its own."""
    good = [make_conversation(user).id, make_conversation(user).id]
    missing = uuid.uuid4()

    def write(ids: list[uuid.UUID]) -> list[Message]:
        return [Message.objects.create(conversation_id=i, role="user", content="x") for i in ids]

    results = persistence.together_or_each([good[0], missing, good[1]], write)
    assert isinstance(results[0], Message) and isinstance(results[2], Message)
    assert isinstance(results[1], IntegrityError)
    assert sorted(Message.objects.values_list("conversation_id", flat=True)) == sorted(good)


def session_of(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.session.session_key or ""


def test_sockets_opening_together_get_their_own_state(
    user: User, other_user: User, make_conversation: Callable[..., Conversation], settings: Any
) -> None:
    settings.CHAT_STATE_MESSAGES = 2
    talked, empty, theirs = (
        make_conversation(user),
        make_conversation(user),
        make_conversation(other_user),
    )
    post_all([persistence.Send(user.pk, talked.id, "question")])
    finish_all(
        [
            persistence.Final(m.pk, "answer", "complete", 1, 1)
            for m in talked.messages.filter(status="streaming")
        ]
    )
    Message.objects.create(conversation=talked, role="user", content="latest")
    mine, foreign = session_of(user), session_of(other_user)

    def opening(session: str, conversation: Conversation) -> persistence.Opening:
        return persistence.Opening(session, conversation.id)

    results = open_all(
        [
            opening(mine, talked),
            opening(mine, empty),
            opening(mine, theirs),
            opening(foreign, theirs),
            opening("no-such-session", talked),
        ]
    )

    (uid, talked_state), (_, empty_state), (_, refused), (other_uid, their_state), anon = results
    assert uid == user.pk and other_uid == other_user.pk
    # The latest two messages, oldest first.
    assert [m.content for m in talked_state.messages] == ["answer", "latest"]
    assert empty_state.conversation.pk == empty.pk and empty_state.messages == []
    assert refused is None and their_state.conversation.pk == theirs.pk
    assert anon == (None, None)


def test_settling_orphans_spares_the_replies_this_process_runs(
    user: User, make_conversation: Callable[..., Conversation], settings: Any
) -> None:
    settings.REDIS_URL = ""  # one process: a reply it does not run is an orphan at once
    orphaned, running = (make_conversation(user) for _ in range(2))
    plans = post_all([persistence.Send(user.pk, c.id, "hi") for c in (orphaned, running)])
    running_ids = {plans[1].assistant_message.pk}
    settle = persistence.settle_orphans.func  # type: ignore[attr-defined]
    for conversation in (orphaned, running):
        settle(conversation.id, running_ids)
    assert [m.status for m in orphaned.messages.all()] == ["complete", "interrupted"]
    assert [m.status for m in running.messages.all()] == ["complete", "streaming"]


def test_a_session_the_database_refuses_fails_its_opening_alone(
    user: User, make_conversation: Callable[..., Conversation]
) -> None:
    """A cookie's session key that the database cannot take (PostgreSQL refuses NUL)
    fails that socket, never the others that open in the same step."""
    conversation = make_conversation(user)
    results = open_all(
        [
            persistence.Opening("aaaaaaaa\x00", conversation.id),
            persistence.Opening(session_of(user), conversation.id),
        ]
    )
    poisoned, (user_id, state) = results
    assert isinstance(poisoned, Exception) or poisoned == (None, None)
    assert user_id == user.pk and state is not None
