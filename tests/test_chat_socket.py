"""The websocket chat: a reply streams, is stored whole, and survives stop, reloads and tabs."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from chat.models import Conversation, Message
from tests.chat_socket import deltas_text
from tests.llm_server import Behaviour, expected_text
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


async def test_reply_streams_and_is_stored_whole(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=30, token_delay=0.005)
    socket = await open_socket(user, conversation.id)
    assert socket.state["messages"] == [] and socket.state["streaming"] is None

    await socket.send(type="send", content="Hello there", client_msg_id=str(uuid.uuid4()))
    frames = await socket.receive_until("done")

    user_msg, assistant = frames[0]["message"], frames[1]["message"]
    assert (user_msg["role"], user_msg["content"]) == ("user", "Hello there")
    assert (assistant["role"], assistant["status"]) == ("assistant", "streaming")
    done = frames[-1]
    assert done["status"] == "complete" and done["error"] is None
    assert deltas_text(frames, assistant["id"]) == expected_text(30) == done["content"]
    assert done["usage"]["completion_tokens"] == 30 and not done["usage"]["estimated"]
    stored = await Message.objects.aget(pk=assistant["id"])
    assert (stored.status, stored.content, stored.total_tokens) == (
        "complete",
        expected_text(30),
        done["usage"]["total_tokens"],
    )
    # The prompt carried the stored history, and the conversation got a title.
    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": "Hello there"}


async def test_reply_deltas_are_coalesced_into_few_frames(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=200, token_delay=0.002)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Hi")
    frames = await socket.receive_until("done")
    deltas = [f for f in frames if f["type"] == "delta"]
    # 200 tokens over about 0.4 s at one frame per 0.1 s: a handful of frames, not 200.
    assert 1 <= len(deltas) <= 20
    assert frames[-1]["content"] == expected_text(200)


async def test_reply_uses_history_and_system_prompt(llm, user, make_conversation, open_socket):
    conversation = await sync_to_async(make_conversation)(user, system_prompt="Be brief.")
    llm.behaviour = Behaviour(tokens=3)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="First")
    await socket.receive_until("done")
    await socket.send(type="send", content="Second")
    await socket.receive_until("done")
    assert llm.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First"},
        {"role": "assistant", "content": expected_text(3)},
        {"role": "user", "content": "Second"},
    ]
    assert llm.requests[-1]["stream_options"] == {"include_usage": True}


async def test_send_same_client_msg_id_twice_posts_once(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    client_msg_id = str(uuid.uuid4())
    await socket.send(type="send", content="Once", client_msg_id=client_msg_id)
    await socket.receive_until("done")
    await socket.send(type="send", content="Once", client_msg_id=client_msg_id)
    echo = await socket.receive()
    assert echo["type"] == "message" and echo["message"]["content"] == "Once"
    assert await socket.nothing_more()
    assert await Message.objects.filter(conversation=conversation).acount() == 2
    assert len(llm.requests) == 1


async def test_send_while_streaming_is_busy(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=50, token_delay=0.02)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="One")
    await socket.receive_until("delta")
    await socket.send(type="send", content="Two")
    frames = await socket.receive_until("error")
    assert frames[-1]["code"] == "busy"
    await socket.receive_until("done")
    assert await Message.objects.filter(conversation=conversation).acount() == 2


async def test_stop_closes_upstream_and_keeps_partial_text(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=500, token_delay=0.01)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Tell me a long story")
    frames = await socket.receive_until("delta")
    await socket.send(type="stop")
    frames += await socket.receive_until("done")
    done = frames[-1]

    assert done["status"] == "stopped"
    streamed = deltas_text(frames, done["message_id"])
    assert streamed == done["content"] and 0 < len(streamed) < len(expected_text(500))
    assert expected_text(500).startswith(streamed)
    # The model server saw its connection closed long before the reply would have ended.
    async with asyncio.timeout(2):
        await wait_until(lambda: llm.disconnects == 1)
    assert llm.completed_streams == 0
    stored = await Message.objects.aget(pk=done["message_id"])
    assert (stored.status, stored.content) == ("stopped", streamed)
    assert stored.total_tokens is not None


async def test_disconnect_mid_reply_completes_and_saves(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=60, token_delay=0.01)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Go on without me")
    frames = await socket.receive_until("delta")
    message_id = frames[1]["message"]["id"]
    await socket.close()

    async def reply_ended() -> bool:
        return (await Message.objects.aget(pk=message_id)).status != "streaming"

    async with asyncio.timeout(6):
        await wait_until(reply_ended, interval=0.05)
    stored = await Message.objects.aget(pk=message_id)
    assert (stored.status, stored.content) == ("complete", expected_text(60))
    assert llm.disconnects == 0


async def test_second_socket_mid_reply_sees_whole_reply(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=80, token_delay=0.01)
    first = await open_socket(user, conversation.id)
    await first.send(type="send", content="Hello")
    await first.receive_until("delta")
    await first.receive_until("delta")  # a few frames in: the second tab has text to catch up

    second = await open_socket(user, conversation.id)
    streaming = second.state["streaming"]
    assert streaming is not None and streaming["seq"] >= 1 and streaming["content"]
    frames = await second.receive_until("done")
    rest = deltas_text(frames, streaming["message_id"], after=streaming["seq"])
    assert streaming["content"] + rest == expected_text(80) == frames[-1]["content"]
    assert (await first.receive_until("done"))[-1]["content"] == expected_text(80)


async def test_reload_after_reply_shows_stored_reply(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Hello")
    await socket.receive_until("done")
    await socket.close()
    again = await open_socket(user, conversation.id)
    messages = again.state["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert messages[1]["content"] == expected_text(20) and again.state["streaming"] is None


async def test_checkpoints_save_partial_text_while_streaming(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=300, token_delay=0.01)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Slowly")
    frames = await socket.receive_until("delta")
    message_id = frames[1]["message"]["id"]

    async def checkpointed() -> bool:
        return bool((await Message.objects.aget(pk=message_id)).content)

    # The first checkpoint is due a second into the reply, which lasts three.
    async with asyncio.timeout(2):
        await wait_until(checkpointed, interval=0.05)
    partial = await Message.objects.aget(pk=message_id)
    assert partial.status == "streaming"
    assert 0 < len(partial.content) < len(expected_text(300))
    assert expected_text(300).startswith(partial.content)
    await socket.receive_until("done")


async def test_regenerate_replaces_the_last_reply(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Question")
    first = (await socket.receive_until("done"))[-1]
    llm.behaviour = Behaviour(tokens=5)
    await socket.send(type="regenerate")
    frames = await socket.receive_until("done")
    assert frames[0] == {"type": "removed", "message_id": first["message_id"]}
    assert frames[-1]["content"] == expected_text(5)
    roles = [m.role async for m in Message.objects.filter(conversation=conversation)]
    assert roles == ["user", "assistant"]
    assert llm.requests[-1]["messages"] == [{"role": "user", "content": "Question"}]


async def test_edit_rewrites_question_and_drops_later_turns(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="First")
    frames = await socket.receive_until("done")
    first_question = frames[0]["message"]["id"]
    await socket.send(type="send", content="Second")
    await socket.receive_until("done")

    await socket.send(type="edit", message_id=first_question, content="First, edited")
    frames = await socket.receive_until("done")
    assert len([f for f in frames if f["type"] == "removed"]) == 3
    stored = [(m.role, m.content) async for m in Message.objects.filter(conversation=conversation)]
    assert stored == [("user", "First, edited"), ("assistant", expected_text(20))]
    assert llm.requests[-1]["messages"] == [{"role": "user", "content": "First, edited"}]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "send"}, "bad_request"),
        ({"type": "send", "content": "   "}, "bad_request"),
        ({"type": "send", "content": 42}, "bad_request"),
        ({"type": "send", "content": "x", "client_msg_id": "not-a-uuid"}, "bad_request"),
        ({"type": "dance"}, "bad_request"),
        ({"type": "edit", "message_id": str(uuid.uuid4()), "content": "x"}, "not_found"),
        ({"type": "regenerate"}, "bad_request"),
        ({"content": "no type"}, "bad_request"),
    ],
)
async def test_bad_frame_gets_error_and_socket_stays_open(
    llm, user, conversation, open_socket, frame, code
):
    socket = await open_socket(user, conversation.id)
    await socket.send(**frame)
    error = await socket.receive()
    assert error["type"] == "error" and error["code"] == code and error["detail"]
    await socket.send(type="send", content="Still here")
    assert (await socket.receive_until("done"))[-1]["status"] == "complete"


async def test_frame_that_is_not_json_gets_error(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    await socket.send_text("{not json")
    assert (await socket.receive())["code"] == "bad_request"
    await socket.send_text("[1, 2]")
    assert (await socket.receive())["code"] == "bad_request"


async def test_deeply_nested_frame_gets_error(llm, user, conversation, open_socket):
    """A frame nested deeper than the JSON decoder recurses is a bad request, not a crash."""
    socket = await open_socket(user, conversation.id)
    await socket.send_text('{"type": "send", "content": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert (await socket.receive())["code"] == "bad_request"
    await socket.send(type="send", content="Still here")
    assert (await socket.receive_until("done"))[-1]["status"] == "complete"


async def test_too_long_message_is_refused(llm, user, conversation, open_socket, settings):
    settings.CHAT_MAX_INPUT_CHARS = 100
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="x" * 101)
    error = await socket.receive()
    assert error["code"] == "too_long" and "100" in error["detail"]
    assert await Message.objects.acount() == 0


async def test_messages_per_minute_are_limited(llm, user, conversation, open_socket, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    llm.behaviour = Behaviour(tokens=1)
    socket = await open_socket(user, conversation.id)
    for text in ("one", "two"):
        await socket.send(type="send", content=text)
        await socket.receive_until("done")
    await socket.send(type="send", content="three")
    assert (await socket.receive())["code"] == "rate_limited"


async def test_tokens_per_day_are_limited(llm, user, conversation, open_socket, settings):
    # Enough for one reply of 20 tokens and a short prompt, not for two.
    settings.CHAT_TOKENS_PER_DAY = 40
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="one")
    await socket.receive_until("done")
    await socket.send(type="send", content="two")
    assert (await socket.receive())["code"] == "quota_exceeded"


async def test_orphaned_streaming_reply_is_marked_interrupted(
    llm, user, conversation, open_socket
):
    # A reply left `streaming` by a server that stopped mid-reply, with its last checkpoint.
    orphan = await Message.objects.acreate(
        conversation=conversation,
        role="assistant",
        status="streaming",
        content="Half a",
        updated_at=timezone.now() - timedelta(hours=1),
    )
    socket = await open_socket(user, conversation.id)
    (shown,) = socket.state["messages"]
    assert (shown["status"], shown["content"]) == ("interrupted", "Half a")
    await socket.send(type="send", content="Next")
    assert (await socket.receive_until("done"))[-1]["status"] == "complete"
    await orphan.arefresh_from_db()
    assert orphan.status == "interrupted"


async def test_conversation_model_is_sent_upstream(llm, user, make_conversation, open_socket):
    conversation: Conversation = await sync_to_async(make_conversation)(user, model="other-model")
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Hi")
    done = (await socket.receive_until("done"))[-1]
    assert llm.requests[-1]["model"] == "other-model"
    assert (await Message.objects.aget(pk=done["message_id"])).model == "other-model"


async def test_fresh_reply_of_another_process_is_left_alone(
    llm, user, conversation, open_socket, settings
):
    # With several processes (a Redis layer), a streaming reply this process does not run
    # may be another's: it is an orphan only once its checkpoints have stopped.
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    running = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", content="Going"
    )
    socket = await open_socket(user, conversation.id)
    assert socket.state["messages"][0]["status"] == "streaming"
    await socket.send(type="send", content="Me too")
    assert (await socket.receive())["code"] == "busy"
    await running.arefresh_from_db()
    assert running.status == "streaming"


async def test_regenerate_counts_toward_the_rate_limit(
    llm, user, conversation, open_socket, settings
):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    llm.behaviour = Behaviour(tokens=1)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="one")
    await socket.receive_until("done")
    await socket.send(type="regenerate")
    await socket.receive_until("done")
    await socket.send(type="regenerate")
    assert (await socket.receive())["code"] == "rate_limited"


async def test_replacing_a_reply_does_not_give_its_tokens_back(
    llm, user, conversation, open_socket, settings
):
    # Enough for one reply of 20 tokens and a short prompt, not for two.
    settings.CHAT_TOKENS_PER_DAY = 40
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="one")
    first = (await socket.receive_until("done"))[-1]
    assert first["usage"]["total_tokens"] >= 10
    # Regenerating would delete the reply that used the tokens; the quota still counts them.
    await socket.send(type="regenerate")
    assert (await socket.receive())["code"] == "quota_exceeded"


async def test_retried_send_while_its_reply_runs_is_answered_not_busy(
    llm, user, conversation, open_socket
):
    llm.behaviour = Behaviour(tokens=50, token_delay=0.02)
    socket = await open_socket(user, conversation.id)
    client_msg_id = str(uuid.uuid4())
    await socket.send(type="send", content="Once", client_msg_id=client_msg_id)
    frames = await socket.receive_until("delta")
    await socket.send(type="send", content="Once", client_msg_id=client_msg_id)
    frames = await socket.receive_until("done")
    echoes = [f for f in frames if f["type"] == "message"]
    assert [e["message"]["content"] for e in echoes] == ["Once"]
    assert not [f for f in frames if f["type"] == "error"]
    assert await Message.objects.filter(conversation=conversation).acount() == 2


async def test_deactivated_user_loses_an_open_socket(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    user.is_active = False
    await user.asave(update_fields=["is_active"])
    await socket.send(type="send", content="Still here?")
    assert (await socket.receive())["code"] == "not_found"
    assert await Message.objects.acount() == 0
