"""The chat service on its own, without a socket or a request: what every front end calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from chat import chats
from chat.models import Message, UsageRecord
from chat.refusals import Refused
from tests import database_faults
from tests.llm_server import Behaviour, expected_text
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    """A watcher that keeps every frame it is given."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def deliver(self, frame: dict[str, Any], text: str) -> None:
        self.frames.append(frame)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame["type"] == kind]

    async def until(self, kind: str) -> dict[str, Any]:
        async with asyncio.timeout(5):
            await wait_until(lambda: bool(self.of_type(kind)))
        return self.of_type(kind)[-1]

    def text_of(self, message_id: str) -> str:
        deltas = [f for f in self.of_type("delta") if f["message_id"] == message_id]
        assert [f["seq"] for f in deltas] == list(range(1, len(deltas) + 1))  # no gap
        return "".join(f["text"] for f in deltas)


async def test_send_stores_both_messages_and_streams_the_reply_to_watchers(
    llm, user, conversation
):
    llm.behaviour = Behaviour(tokens=12, token_delay=0.002)
    service, recorder = chats.service(), Recorder()
    attachment = service.watch(conversation.id, recorder)

    started = await service.send(user.pk, conversation.id, "Hello")
    message = await service.finished(started)
    attachment.detach()

    assert started.user_message is not None and started.assistant_message is not None
    assert message is not None and (message.status, message.content) == (
        "complete",
        expected_text(12),
    )
    assigned = str(started.assistant_message.id)
    assert [f["message"]["role"] for f in recorder.of_type("message")] == ["user", "assistant"]
    assert recorder.text_of(assigned) == expected_text(12)
    stored = await Message.objects.aget(pk=assigned)
    assert (stored.content, stored.total_tokens) == (expected_text(12), message.total_tokens)


async def test_a_second_send_while_a_reply_runs_is_busy(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=200, token_delay=0.01)
    service = chats.service()
    started = await service.send(user.pk, conversation.id, "One")
    with pytest.raises(Refused) as refused:
        await service.send(user.pk, conversation.id, "Two")
    assert refused.value.code == "busy"
    await service.stop(user.pk, conversation.id)
    message = await service.finished(started)
    assert message is not None and message.status == "stopped"


async def test_refusals_are_new_each_time(llm, user, other_user, conversation):
    """A shared exception instance would grow its traceback with every raise."""
    service = chats.service()
    raised = []
    for _ in range(2):
        with pytest.raises(Refused) as refused:
            await service.send(other_user.pk, conversation.id, "not mine")
        raised.append(refused.value)
    assert raised[0] is not raised[1]
    assert {r.code for r in raised} == {"not_found"}


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"model": "no-such-model"}, "bad_request"),
        ({"title": "x" * 201}, "too_long"),
    ],
)
async def test_create_checks_its_fields(llm, user, settings, fields, code):
    settings.CHAT_MODELS = ["model-a"]
    with pytest.raises(Refused) as refused:
        await chats.service().create(user.pk, **fields)
    assert refused.value.code == code


async def test_too_long_message_is_refused_and_nothing_is_stored(
    llm, user, conversation, settings
):
    settings.CHAT_MAX_INPUT_CHARS = 10
    with pytest.raises(Refused) as refused:
        await chats.service().send(user.pk, conversation.id, "x" * 11)
    assert refused.value.code == "too_long"
    assert await Message.objects.filter(conversation=conversation).acount() == 0


async def test_rate_limit_says_when_to_try_again(llm, user, conversation, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    llm.behaviour = Behaviour(tokens=2)
    service = chats.service()
    await service.finished(await service.send(user.pk, conversation.id, "one"))
    with pytest.raises(Refused) as refused:
        await service.send(user.pk, conversation.id, "two")
    assert refused.value.code == "rate_limited"
    assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= 60


async def test_update_tells_every_watcher(llm, user, conversation):
    service, recorder = chats.service(), Recorder()
    attachment = service.watch(conversation.id, recorder)
    updated = await service.update(user.pk, conversation.id, title="  Renamed  ")
    attachment.detach()
    assert updated.title == "Renamed"
    assert recorder.of_type("conversation")[-1]["conversation"]["title"] == "Renamed"


async def test_delete_stops_the_running_reply_first(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=500, token_delay=0.01)
    service, recorder = chats.service(), Recorder()
    attachment = service.watch(conversation.id, recorder)
    await service.send(user.pk, conversation.id, "Hello")
    await recorder.until("delta")

    await service.delete(user.pk, conversation.id)
    attachment.detach()

    assert recorder.of_type("done")[-1]["status"] == "stopped"
    assert recorder.frames[-1]["type"] == "deleted"
    assert service.replies.running(conversation.id) is None
    async with asyncio.timeout(5):
        await wait_until(lambda: llm.disconnects == 1)  # the model stopped billing
    with pytest.raises(Refused):
        await service.transcript(user.pk, conversation.id)


async def test_follow_after_delta_k_gives_exactly_the_rest(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=80, token_delay=0.01)
    service, sender = chats.service(), Recorder()
    attachment = service.watch(conversation.id, sender)
    started = await service.send(user.pk, conversation.id, "Hello")
    assert started.assistant_message is not None
    message_id = str(started.assistant_message.id)
    async with asyncio.timeout(5):
        await wait_until(lambda: len(sender.of_type("delta")) >= 3)
    seen = sender.of_type("delta")[:2]

    follower = Recorder()
    following = await service.follow(user.pk, conversation.id, follower, after=2)
    assert following is not None
    await follower.until("done")
    following.detach()
    attachment.detach()

    rest = follower.of_type("delta")
    assert [f["seq"] for f in rest] == list(range(3, 3 + len(rest)))
    assert "".join(f["text"] for f in seen + rest) == expected_text(80)
    assert follower.of_type("done")[-1]["message_id"] == message_id


async def test_follow_without_a_running_reply_is_one_state(llm, user, conversation):
    recorder = Recorder()
    assert await chats.service().follow(user.pk, conversation.id, recorder, after=None) is None
    assert [f["type"] for f in recorder.frames] == ["state"]


# --- Our own database failing under a step (a trigger refuses the write) -------------------


@pytest.fixture
def database_refusing():
    yield database_faults.refuse
    database_faults.allow()


async def test_a_send_the_database_refuses_is_an_internal_error_on_the_socket(
    llm, user, conversation, open_socket, database_refusing, caplog
):
    await sync_to_async(database_refusing)("INSERT")
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Hello")
    error = await socket.receive_until("error")
    assert error[-1]["code"] == "internal_error"
    assert any("serving a 'send' frame failed" in r.getMessage() for r in caplog.records)
    await sync_to_async(database_faults.allow)()
    await socket.send(type="send", content="Again")  # the socket was kept, and works
    done = (await socket.receive_until("done"))[-1]
    assert done["status"] == "complete"


async def test_a_final_write_the_database_refuses_is_tried_until_it_is_saved(
    llm, user, conversation, open_socket, database_refusing, caplog
):
    """Until the final write is saved the reply stays running here (a tab that opens
    sees it streaming, nobody settles it); then its tabs get `done` and the quota counts
    its tokens."""
    llm.behaviour = Behaviour(tokens=5)
    await sync_to_async(database_refusing)("UPDATE", "NEW.status <> 'streaming'")
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Hello")
    async with asyncio.timeout(5):
        await wait_until(lambda: any("saving reply" in r.getMessage() for r in caplog.records))
    reply = chats.service().replies.running(conversation.id)
    assert reply is not None and reply.done is None
    second_tab = await open_socket(user, conversation.id)
    assert second_tab.state["streaming"]["content"] == expected_text(5)

    await sync_to_async(database_faults.allow)()
    done = (await socket.receive_until("done"))[-1]

    assert (done["status"], done["content"]) == ("complete", expected_text(5))
    stored = await Message.objects.aget(pk=done["message_id"])
    assert (stored.status, stored.content) == ("complete", expected_text(5))
    record = await UsageRecord.objects.aget(message_id=stored.pk)
    assert stored.total_tokens and record.total_tokens == stored.total_tokens
