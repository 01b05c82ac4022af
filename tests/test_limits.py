"""Limits that hold: tokens counted while replies stream, caps on running replies, new
conversations and sockets, and turns at the model shared fairly between users."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from chat import chats
from chat.models import UsageRecord
from chat.refusals import Refused
from chat.turns import FairTurns
from tests.chat_socket import ChatSocket
from tests.llm_server import Behaviour
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def conversations(user, make_conversation):
    return [await sync_to_async(make_conversation)(user) for _ in range(3)]


async def test_parallel_replies_cannot_overrun_the_daily_quota(llm, user, conversations, settings):
    """A reply reserves its prompt and the most it may write when it starts, and asks the
    model for no more than the quota has left; its final write settles what it used."""
    settings.CHAT_TOKENS_PER_DAY = 1000
    llm.behaviour = Behaviour(tokens=50, token_delay=0.01)
    service = chats.service()
    first = await service.send(user.pk, conversations[0].id, "Hello")
    with pytest.raises(Refused) as refused:
        await service.send(user.pk, conversations[1].id, "Me too")
    assert refused.value.code == "quota_exceeded" and refused.value.retry_after
    message = await service.finished(first)
    assert message is not None and message.status == "complete"

    async with asyncio.timeout(5):
        await wait_until(lambda: bool(llm.requests))
    asked = llm.requests[0]["max_tokens"]
    assert 900 < asked < 1000  # what the quota left after the prompt
    record = await UsageRecord.objects.aget(message_id=message.pk)
    assert message.total_tokens is not None and message.total_tokens < 100
    assert record.total_tokens == message.total_tokens  # settled to what it used
    second = await service.send(user.pk, conversations[1].id, "Now me")
    assert second.reply is not None
    await service.finished(second)


async def test_replies_running_per_user_are_capped(llm, user, conversations, settings):
    settings.CHAT_REPLIES_RUNNING_PER_USER = 2
    llm.behaviour = Behaviour(tokens=500, token_delay=0.01)
    service = chats.service()
    for conversation in conversations[:2]:
        await service.send(user.pk, conversation.id, "Hello")
    with pytest.raises(Refused) as refused:
        await service.send(user.pk, conversations[2].id, "One more")
    assert refused.value.code == "rate_limited" and "when one ends" in refused.value.detail
    await service.stop(user.pk, conversations[0].id)
    async with asyncio.timeout(5):
        await wait_until(lambda: service.replies.running(conversations[0].id) is None)
    started = await service.send(user.pk, conversations[2].id, "Now")
    assert started.reply is not None


async def test_conversations_per_minute_are_capped(llm, user, other_user, settings):
    settings.CHAT_CONVERSATIONS_PER_MINUTE = 2
    service = chats.service()
    for _ in range(2):
        await service.create(user.pk)
    with pytest.raises(Refused) as refused:
        await service.create(user.pk)
    assert refused.value.code == "rate_limited"
    assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= 60
    await service.create(other_user.pk)  # someone else's are their own


async def test_sockets_per_user_are_capped(llm, user, conversation, login_cookie, settings):
    settings.CHAT_SOCKETS_PER_USER = 2
    cookie = await login_cookie(user)
    tabs = [ChatSocket(conversation.id, cookie=cookie) for _ in range(3)]
    for tab in tabs:
        await tab.connect()
    assert [tab.connected for tab in tabs] == [True, True, False]
    assert tabs[2].close_code == 4429
    await tabs[0].close()
    again = ChatSocket(conversation.id, cookie=cookie)
    await again.connect()
    assert again.connected
    for tab in (tabs[1], again):
        await tab.close()


async def test_turns_at_the_model_go_to_the_user_served_longest_ago():
    turns = FairTurns(1)
    order: list[str] = []
    release = asyncio.Event()

    async def request(name: str) -> None:
        async with turns.turn(name[0]):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(request("a1"))
    await asyncio.sleep(0)
    later = [asyncio.create_task(request(name)) for name in ("a2", "a3", "b1", "c1")]
    async with asyncio.timeout(2):
        await wait_until(lambda: turns.waiting() == 4)
    release.set()
    await asyncio.gather(first, *later)
    # a holds a turn while b and c wait: they go before a's next requests.
    assert order == ["a1", "b1", "c1", "a2", "a3"]


async def test_a_request_that_stops_waiting_gives_up_its_place():
    turns = FairTurns(1)
    release = asyncio.Event()
    served: list[str] = []

    async def request(name: str) -> None:
        async with turns.turn(name):
            served.append(name)
            await release.wait()

    holder = asyncio.create_task(request("a"))
    await asyncio.sleep(0)
    gone, waiting = asyncio.create_task(request("b")), asyncio.create_task(request("c"))
    async with asyncio.timeout(2):
        await wait_until(lambda: turns.waiting() == 2)
    gone.cancel()
    release.set()
    await asyncio.gather(holder, waiting)
    assert served == ["a", "c"] and turns.held == 0 and turns.waiting() == 0
