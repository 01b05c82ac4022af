"""Only a conversation's owner may watch or drive it, from an allowed origin."""

from __future__ import annotations

import uuid

import pytest

from chat.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


async def test_anonymous_socket_is_refused_4401(llm, conversation, open_socket):
    socket = await open_socket(None, conversation.id)
    assert not socket.connected and socket.close_code == 4401


async def test_other_users_conversation_is_refused_4404(
    llm, other_user, conversation, open_socket
):
    socket = await open_socket(other_user, conversation.id)
    assert not socket.connected and socket.close_code == 4404


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
