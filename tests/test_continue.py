"""Continue: an `interrupted` reply goes on in the same message, after the text it had,
its usage added up; over the websocket and the API (JSON and SSE), and reattached after
delta k like any reply."""

from __future__ import annotations

from typing import Any

import pytest

from chat.models import Message, UsageRecord
from tests.api_client import SSE, EventReader, atoken_headers, delta_text, url
from tests.asgi_client import ApplicationClient
from tests.chat_socket import ChatSocket, deltas_text
from tests.llm_server import Behaviour, expected_text

pytestmark = pytest.mark.django_db(transaction=True)

PREFIX = "The first part, "


@pytest.fixture
def cut(conversation: Any) -> Message:
    """The conversation's reply, cut by a server that stopped: `interrupted`, with text."""
    Message.objects.create(conversation=conversation, role="user", content="Tell me")
    reply = Message.objects.create(
        conversation=conversation,
        role="assistant",
        content=PREFIX,
        status=Message.Status.INTERRUPTED,
        model="test-model",
        prompt_tokens=10,
        completion_tokens=4,
        total_tokens=14,
        error_code="interrupted",
        error_detail="The server stopped while writing this reply.",
    )
    UsageRecord.objects.create(owner=conversation.owner, message_id=reply.pk, total_tokens=14)
    return reply


async def socket_of(conversation: Any, login_cookie: Any, user: Any) -> ChatSocket:
    socket = ChatSocket(conversation.id, cookie=await login_cookie(user))
    await socket.connect()
    assert socket.connected
    return socket


async def test_continue_goes_on_in_the_same_message(llm, user, conversation, cut, login_cookie):
    llm.behaviour = Behaviour(tokens=12)
    socket = await socket_of(conversation, login_cookie, user)

    await socket.send(type="continue")
    frames = await socket.receive_until("done")
    await socket.close()

    started, done = frames[0], frames[-1]
    assert started["type"] == "message" and started["message"]["id"] == str(cut.pk)
    assert started["message"]["status"] == "streaming"
    assert started["message"]["content"] == PREFIX
    assert done["message_id"] == str(cut.pk) and done["status"] == "complete"
    text = deltas_text(frames, str(cut.pk))
    assert done["content"] == PREFIX + text == PREFIX + expected_text(12)
    # The model was asked to go on after the text it had written.
    prompt = llm.requests[-1]["messages"]
    assert prompt[-1] == {"role": "assistant", "content": PREFIX}
    assert prompt[-2] == {"role": "user", "content": "Tell me"}
    stored = await Message.objects.aget(pk=cut.pk)
    assert (stored.status, stored.content) == ("complete", PREFIX + expected_text(12))
    # Usage added up: what the first part used, and what the rest did.
    assert done["usage"]["completion_tokens"] == stored.completion_tokens == 4 + 12
    assert done["usage"]["prompt_tokens"] == stored.prompt_tokens
    assert (stored.prompt_tokens or 0) > 10
    assert stored.error_code == ""
    assert await Message.objects.filter(conversation=conversation).acount() == 2
    record = await UsageRecord.objects.aget(message_id=cut.pk)
    assert record.total_tokens == stored.total_tokens


@pytest.mark.parametrize("last", ["complete", "stopped", "none"])
async def test_only_an_interrupted_reply_can_be_continued(
    llm, user, conversation, login_cookie, last
):
    if last != "none":
        await Message.objects.acreate(conversation=conversation, role="user", content="Hi")
        await Message.objects.acreate(
            conversation=conversation, role="assistant", content="Done.", status=last
        )
    socket = await socket_of(conversation, login_cookie, user)

    await socket.send(type="continue")
    error = await socket.receive()
    await socket.close()

    assert error == {
        "type": "error",
        "code": "bad_request",
        "detail": "There is no interrupted reply to continue.",
    }
    assert llm.requests == []


async def test_continue_over_the_api_as_json(llm, user, conversation, cut):
    llm.behaviour = Behaviour(tokens=5)
    headers = await atoken_headers(user)

    response = await ApplicationClient().post(
        url(conversation, "continue"), "", content_type="application/json", headers=headers
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["user_message"] is None
    assert body["assistant_message"]["id"] == str(cut.pk)
    assert body["assistant_message"]["content"] == PREFIX + expected_text(5)


async def test_continue_over_sse_and_reattach_after_delta_k(llm, user, conversation, cut):
    llm.behaviour = Behaviour(tokens=40, token_delay=0.01)
    headers = {**await atoken_headers(user), **SSE}
    client = ApplicationClient()
    response = await client.post(
        url(conversation, "continue"), "", content_type="application/json", headers=headers
    )
    assert response.status_code == 200
    events = EventReader(response)
    first: list[Any] = []
    while len([e for e in first if e.event == "delta"]) < 3:
        event = await events.next()
        assert event is not None
        first.append(event)

    again = await client.get(
        url(conversation, "events"), headers={**headers, "Last-Event-ID": "2"}
    )
    rest = await EventReader(again).rest()
    await events.rest()

    assert rest[-1].event == "done"
    assert rest[-1].data["content"] == PREFIX + expected_text(40)
    first_two = "".join(e.data["text"] for e in first if e.event == "delta")[
        : len("".join(e.data["text"] for e in [d for d in first if d.event == "delta"][:2]))
    ]
    # Exactly the rest after delta 2: the text it had is not sent again.
    assert PREFIX + first_two + delta_text(rest, after=2) == rest[-1].data["content"]


async def test_continue_is_refused_while_a_reply_runs(llm, user, conversation, login_cookie):
    llm.behaviour = Behaviour(tokens=200, token_delay=0.01)
    socket = await socket_of(conversation, login_cookie, user)
    await socket.send(type="send", content="Go")
    await socket.receive_until("delta")

    await socket.send(type="continue")
    frames = await socket.receive_until("error")
    await socket.send(type="stop")
    await socket.receive_until("done")
    await socket.close()

    assert frames[-1]["code"] == "busy"
