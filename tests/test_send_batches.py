"""Sends and final writes stored many at once: each item gets its own result, and one
bad item costs the others nothing (`chat.persistence`, issue 4)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError

from chat import llm, persistence
from chat.models import Conversation, Message, UsageRecord

post_all = persistence.post_user_messages.func  # type: ignore[attr-defined]
finish_all = persistence.finish_all.func  # type: ignore[attr-defined]


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
    assert plan.prompt[-1] == {"role": "user", "content": "hello\nsecond line"}
    assert other_plan.prompt[-1]["content"] == "theirs"
    assert isinstance(refused, persistence.Refused) and refused.code == "not_found"
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
    usage = llm.Usage(prompt_tokens=5, completion_tokens=7)
    results = finish_all(
        [
            persistence.Final(ids[0], "done", "complete", usage),
            persistence.Final(ids[1], "par", "stopped", usage),
            persistence.Final(ids[2], "", "failed", usage, llm.LLMError("upstream_error", "500")),
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
    finish_all([persistence.Final(ended, "final", "complete", llm.Usage(1, 1))])
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

    results = persistence._together_or_each([good[0], missing, good[1]], write)
    assert isinstance(results[0], Message) and isinstance(results[2], Message)
    assert isinstance(results[1], IntegrityError)
    assert sorted(Message.objects.values_list("conversation_id", flat=True)) == sorted(good)
