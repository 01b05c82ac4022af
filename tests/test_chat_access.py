"""Only a conversation's owner may watch or drive it, from an allowed origin."""

from __future__ import annotations

import logging
import uuid

import pytest

from chat.models import Message
from tests.chat_socket import ChatSocket

pytestmark = pytest.mark.django_db(transaction=True)


async def test_anonymous_socket_is_refused_4401(llm, conversation, open_socket):
    socket = await open_socket(None, conversation.id)
    assert not socket.connected and socket.close_code == 4401


async def test_other_users_conversation_is_refused_4404(
    llm, other_user, conversation, open_socket
):
    socket = await open_socket(other_user, conversation.id)
    assert not socket.connected and socket.close_code == 4404


async def test_frames_during_a_refusal_are_dropped_quietly(
    llm, other_user, conversation, login_cookie, caplog
):
    """Frames a refused socket sends while its close handshake runs are dropped: nothing is
    served, and nothing is logged as an error."""
    socket = ChatSocket(conversation.id, cookie=await login_cookie(other_user))
    await socket.communicator.connect(timeout=5)
    for frame in ('{"type": "send", "content": "x"}', '{"type": "stop"}', "not json"):
        await socket.send_text(frame)
    assert (await socket.communicator.receive_output(5))["code"] == 4404
    assert await socket.communicator.receive_nothing(timeout=0.2)
    await socket.communicator.wait(timeout=5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await Message.objects.acount() == 0


async def test_missing_conversation_is_refused_4404(llm, user, open_socket):
    socket = await open_socket(user, uuid.uuid4())
    assert not socket.connected and socket.close_code == 4404


async def test_foreign_origin_is_refused(llm, user, conversation, open_socket):
    socket = await open_socket(user, conversation.id, origin="https://evil.example")
    assert not socket.connected and socket.state is None


async def test_owner_is_checked_on_every_frame(llm, user, other_user, conversation, open_socket):
    socket = await open_socket(user, conversation.id)
    # The conversation changes hands (or is deleted) while the socket is open.
    conversation.owner = other_user
    await conversation.asave(update_fields=["owner"])
    await socket.send(type="send", content="Still mine?")
    assert (await socket.receive())["code"] == "not_found"
    await socket.send(type="stop")
    assert (await socket.receive())["code"] == "not_found"
    assert await Message.objects.acount() == 0
