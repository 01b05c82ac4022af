"""The API's replies: posted and awaited as JSON, or streamed as server-sent events;
reattached, stopped, regenerated; and the same reply seen over the websocket."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator

from chat import chats, sse
from chat.models import Message
from chatsite.asgi import application
from tests.api_client import (
    SSE,
    EventReader,
    atoken_headers,
    delta_text,
    deltas_of,
    is_type,
    url,
)
from tests.asgi_client import logged_in_application_client
from tests.chat_socket import deltas_text
from tests.conftest import logged_in_client
from tests.llm_server import Behaviour, expected_text
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True, params=["django", "application"])
def served_by(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: through Django's handler (the test client's way, the views of
    `chat.api`), and through the whole ASGI application as a server runs it, where the
    event streams are `chat.sse_routes`' and the rest goes on to Django."""
    if request.param == "application":
        this_module = sys.modules[__name__]
        monkeypatch.setattr(this_module, "logged_in_client", logged_in_application_client)
    return str(request.param)


async def post(client: Any, path: str, data: Any = None, **headers: str) -> Any:
    body = json.dumps(data) if data is not None else ""
    return await client.post(path, body, content_type="application/json", headers=headers)


async def stream(client: Any, conversation: Any, content: str = "Hello") -> EventReader:
    response = await post(client, url(conversation, "messages"), {"content": content}, **SSE)
    assert response.status_code == 200, response.content
    return EventReader(response)


def http_scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """An HTTP request's ASGI scope, as a server gives it to the application."""
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ["127.0.0.1", 40000],
        "server": ["testserver", 80],
    }


def watching(conversation: Any) -> bool:
    """Whether anyone in this process still watches the conversation."""
    return bool(chats.service().watchers._by_conversation.get(conversation.pk))


async def stored(message_id: str) -> Message:
    return await Message.objects.aget(pk=message_id)


# --- JSON -----------------------------------------------------------------------------------


async def test_send_without_sse_waits_for_the_whole_reply(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=12, token_delay=0.005)
    client = await logged_in_client(user)

    response = await post(client, url(conversation, "messages"), {"content": "Hi"})

    assert response.status_code == 201
    body = response.json()
    assert (body["user_message"]["role"], body["user_message"]["content"]) == ("user", "Hi")
    assistant = body["assistant_message"]
    assert (assistant["status"], assistant["content"]) == ("complete", expected_text(12))
    assert assistant["usage"]["completion_tokens"] == 12
    saved = await stored(assistant["id"])
    assert (saved.status, saved.content) == ("complete", expected_text(12))


async def test_send_retried_client_msg_id_posts_once(llm, user, conversation):
    client = await logged_in_client(user)
    data = {"content": "Once", "client_msg_id": str(uuid.uuid4())}

    first = await post(client, url(conversation, "messages"), data)
    again = await post(client, url(conversation, "messages"), data)

    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["user_message"]["id"] == first.json()["user_message"]["id"]
    assert again.json()["assistant_message"] is None
    assert await Message.objects.filter(conversation=conversation).acount() == 2
    assert len(llm.requests) == 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"content": "   "}, id="blank"),
        pytest.param({}, id="missing"),
        pytest.param({"content": 5}, id="not-a-string"),
        pytest.param({"content": "hi", "client_msg_id": "nope"}, id="bad-client-msg-id"),
        pytest.param({"content": "hi", "extra": 1}, id="unknown-field"),
    ],
)
async def test_send_bad_input_is_400(llm, user, conversation, data):
    client = await logged_in_client(user)

    response = await post(client, url(conversation, "messages"), data, **SSE)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert not watching(conversation)


async def test_send_too_long_is_413(llm, user, conversation, settings):
    settings.CHAT_MAX_INPUT_CHARS = 10
    client = await logged_in_client(user)

    response = await post(client, url(conversation, "messages"), {"content": "x" * 11})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_long"


async def test_send_over_the_rate_limit_is_429_with_retry_after(llm, user, conversation, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    client = await logged_in_client(user)
    assert (await post(client, url(conversation, "messages"), {"content": "1"})).status_code == 201

    response = await post(client, url(conversation, "messages"), {"content": "2"}, **SSE)

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert not watching(conversation)


async def test_send_while_a_reply_runs_is_409(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=40, token_delay=0.01)
    client = await logged_in_client(user)
    events = await stream(client, conversation)
    await events.until(is_type("delta"))

    response = await post(client, url(conversation, "messages"), {"content": "Again"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "busy"
    await events.rest()


# --- SSE ------------------------------------------------------------------------------------


async def test_sse_streams_the_reply_as_stored(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=30, token_delay=0.005)
    client = await logged_in_client(user)

    response = await post(client, url(conversation, "messages"), {"content": "Hello"}, **SSE)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    events = await EventReader(response).rest()
    user_message, assistant = events[0].data["message"], events[1].data["message"]
    assert [e.event for e in events[:2]] == ["message", "message"]
    assert (user_message["content"], assistant["status"]) == ("Hello", "streaming")
    done = events[-1]
    assert done.event == "done" and done.data["status"] == "complete"
    assert all(e.data["message_id"] == assistant["id"] for e in deltas_of(events))
    text = delta_text(events)
    assert text == expected_text(30) == done.data["content"]
    assert (await stored(assistant["id"])).content == text
    assert not watching(conversation)


async def test_sse_event_format(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=3)
    client = await logged_in_client(user)
    events = await stream(client, conversation)
    await events.rest()

    blocks = events.raw.split("\n\n")
    assert blocks[-1] == ""
    delta = next(b for b in blocks if b.startswith("event: delta"))
    lines = delta.split("\n")
    assert lines[0] == "event: delta" and lines[1] == "id: 1"
    assert json.loads(lines[2].removeprefix("data: "))["type"] == "delta"
    message = next(b for b in blocks if b.startswith("event: message"))
    assert [line.split(":")[0] for line in message.split("\n")] == ["event", "data"]


async def test_sse_sends_keep_alive_comments_while_silent(llm, user, conversation, monkeypatch):
    monkeypatch.setattr(sse, "KEEP_ALIVE_SECONDS", 0.05)
    llm.behaviour = Behaviour(tokens=3, first_token_delay=0.3)
    client = await logged_in_client(user)
    events = await stream(client, conversation)

    await events.rest()

    before_first_delta = events.raw.split("event: delta")[0]
    assert ": keep-alive\n\n" in before_first_delta


async def test_sse_refusal_before_streaming_is_json(llm, user, other_user, make_conversation):
    theirs = await sync_to_async(make_conversation)(other_user)
    client = await logged_in_client(user)

    response = await post(client, url(theirs, "messages"), {"content": "hi"}, **SSE)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"
    assert not watching(theirs)


@pytest.mark.parametrize("how", ["header", "query"])
async def test_events_reattach_after_delta_k_gives_exactly_the_rest(llm, user, conversation, how):
    llm.behaviour = Behaviour(tokens=60, token_delay=0.02)
    client = await logged_in_client(user)
    first = await stream(client, conversation)
    seen = await first.until(lambda e: e.event == "delta" and e.data["seq"] == 2)
    await first.close()  # the client goes away after delta 2

    if how == "header":
        response = await client.get(url(conversation, "events"), headers={"Last-Event-ID": "2"})
    else:
        response = await client.get(url(conversation, "events"), {"after": "2"})

    assert response.status_code == 200
    rest = await EventReader(response).rest()
    assert rest[-1].event == "done" and all(e.event == "delta" for e in rest[:-1])
    text = delta_text(seen) + delta_text(rest, after=2)
    assert text == expected_text(60) == rest[-1].data["content"]
    assert (await stored(rest[-1].data["message_id"])).content == text


async def test_events_without_after_start_with_the_state(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=40, token_delay=0.02)
    client = await logged_in_client(user)
    first = await stream(client, conversation)
    await first.until(is_type("delta"))

    response = await client.get(url(conversation, "events"))

    events = await EventReader(response).rest()
    state, done = events[0], events[-1]
    assert state.event == "state" and done.event == "done"
    streaming = state.data["streaming"]
    text = streaming["content"] + delta_text(events, after=streaming["seq"])
    assert text == expected_text(40) == done.data["content"]
    await first.rest()


async def test_events_with_no_reply_running_is_one_state(llm, user, conversation):
    client = await logged_in_client(user)
    await post(client, url(conversation, "messages"), {"content": "Hi"})

    response = await client.get(url(conversation, "events"), headers={"Last-Event-ID": "3"})

    events = await EventReader(response).rest()
    assert [e.event for e in events] == ["state"]
    assert events[0].data["streaming"] is None
    assert [m["role"] for m in events[0].data["messages"]] == ["user", "assistant"]
    assert not watching(conversation)


@pytest.mark.parametrize("seen", ["x", "-1"])
async def test_events_bad_last_event_id_is_400(llm, user, conversation, seen):
    client = await logged_in_client(user)

    response = await client.get(url(conversation, "events"), headers={"Last-Event-ID": seen})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


async def test_client_that_disconnects_leaves_the_reply_to_complete(llm, user, conversation):
    """Through the ASGI application, as a server runs it: the client's disconnect
    cancels the response, which stops watching; the reply goes on and is saved whole."""
    llm.behaviour = Behaviour(tokens=40, token_delay=0.01)
    headers = {**await atoken_headers(user), **SSE, "Content-Type": "application/json"}
    scope = http_scope("POST", url(conversation, "messages"), headers)
    client = ApplicationCommunicator(application, scope)
    await client.send_input({"type": "http.request", "body": b'{"content": "Hello"}'})
    start = await client.receive_output(5)
    assert start["type"] == "http.response.start" and start["status"] == 200
    body = b""
    while b"event: delta" not in body:
        body += (await client.receive_output(5))["body"]

    await client.send_input({"type": "http.disconnect"})
    await client.wait(5)

    assert not watching(conversation)
    assistant = await Message.objects.aget(conversation=conversation, role="assistant")
    async with asyncio.timeout(5):
        await wait_until(lambda: llm.completed_streams == 1)
        await wait_until(lambda: chats.service().replies.running(conversation.pk) is None)
    await assistant.arefresh_from_db()
    assert (assistant.status, assistant.content) == ("complete", expected_text(40))


# --- Stop and regenerate --------------------------------------------------------------------


async def test_stop_ends_the_stream_as_stopped(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=500, token_delay=0.01)
    client = await logged_in_client(user)
    events = await stream(client, conversation)
    seen = await events.until(is_type("delta"))

    response = await post(client, url(conversation, "stop"))

    assert response.status_code == 202
    seen += await events.rest()
    done = seen[-1]
    assert done.event == "done" and done.data["status"] == "stopped"
    assert delta_text(seen) == done.data["content"]
    assert (await stored(done.data["message_id"])).status == "stopped"


async def test_stop_with_no_reply_is_202(llm, user, conversation):
    client = await logged_in_client(user)

    assert (await post(client, url(conversation, "stop"))).status_code == 202


async def test_regenerate_replaces_the_last_reply(llm, user, conversation):
    client = await logged_in_client(user)
    first = (await post(client, url(conversation, "messages"), {"content": "Hi"})).json()
    llm.behaviour = Behaviour(tokens=5)

    response = await post(client, url(conversation, "regenerate"))

    assert response.status_code == 201
    body = response.json()
    assert body["user_message"] is None
    assert body["assistant_message"]["content"] == expected_text(5)
    ids = [m.pk async for m in Message.objects.filter(conversation=conversation)]
    assert str(first["assistant_message"]["id"]) not in {str(i) for i in ids}
    assert len(ids) == 2


async def test_regenerate_streams_like_messages(llm, user, conversation):
    client = await logged_in_client(user)
    first = (await post(client, url(conversation, "messages"), {"content": "Hi"})).json()
    llm.behaviour = Behaviour(tokens=7, token_delay=0.005)

    response = await post(client, url(conversation, "regenerate"), **SSE)

    events = await EventReader(response).rest()
    assert events[0].event == "removed"
    assert events[0].data["message_id"] == first["assistant_message"]["id"]
    assert events[1].event == "message" and events[-1].event == "done"
    assert delta_text(events) == expected_text(7) == events[-1].data["content"]


async def test_regenerate_with_nothing_to_regenerate_is_400(llm, user, conversation):
    client = await logged_in_client(user)

    response = await post(client, url(conversation, "regenerate"), **SSE)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


async def test_delete_stops_the_running_reply(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=500, token_delay=0.01)
    client = await logged_in_client(user)
    events = await stream(client, conversation)
    await events.until(is_type("delta"))

    response = await client.delete(url(conversation))

    assert response.status_code == 204
    rest = await events.rest()
    assert rest[-1].event == "done" and rest[-1].data["status"] == "stopped"
    assert not await Message.objects.filter(conversation=conversation).aexists()


# --- With the websocket ---------------------------------------------------------------------


async def test_reply_started_over_sse_shows_live_on_the_websocket(
    llm, user, conversation, open_socket
):
    llm.behaviour = Behaviour(tokens=30, token_delay=0.005)
    socket = await open_socket(user, conversation.id)
    client = await logged_in_client(user)

    events = await stream(client, conversation)
    streamed = await events.rest()
    frames = await socket.receive_until("done")

    assistant = frames[1]["message"]
    assert frames[0]["type"] == "message" and frames[0]["message"]["content"] == "Hello"
    assert deltas_text(frames, assistant["id"]) == delta_text(streamed) == expected_text(30)
    assert frames[-1] == streamed[-1].data


async def test_reply_started_on_the_websocket_can_be_followed_over_sse(
    llm, user, conversation, open_socket
):
    llm.behaviour = Behaviour(tokens=40, token_delay=0.02)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Hello", client_msg_id=str(uuid.uuid4()))
    frames = await socket.receive_until("delta")
    client = await logged_in_client(user)

    response = await client.get(url(conversation, "events"), {"after": "1"})

    events = await EventReader(response).rest()
    frames += await socket.receive_until("done")
    assistant_id = frames[1]["message"]["id"]
    assert events[-1].event == "done" and events[-1].data == frames[-1]
    assert frames[2]["seq"] == 1
    assert frames[2]["text"] + delta_text(events, after=1) == expected_text(40)
    assert deltas_text(frames, assistant_id) == expected_text(40)


async def test_events_right_after_done_is_one_state(llm, user, conversation):
    """A reply that has sent its `done` is over, even while its last step (telling a
    slower watcher) still holds its place among the running replies."""

    class SlowWatcher:
        async def deliver(self, frame: dict[str, Any], text: str) -> None:
            await asyncio.sleep(0.2)

    llm.behaviour = Behaviour(tokens=5)
    client = await logged_in_client(user)
    events = await stream(client, conversation)
    slow = chats.service().watch(conversation.pk, SlowWatcher())
    try:
        await events.rest()
        response = await client.get(url(conversation, "events"), {"after": "1"})
        async with asyncio.timeout(5):
            followed = await EventReader(response).rest()
    finally:
        slow.detach()
    assert [e.event for e in followed] == ["state"]


async def test_sse_response_never_sent_stops_watching(conversation):
    """The client left after the view answered and before the stream began: nothing
    iterates the response, whose generator never runs its `finally`; dropping the
    response detaches."""
    queue = sse.EventQueue()
    attachment = chats.service().watch(conversation.pk, queue)
    response = sse.event_stream(sse.Stream(queue, attachment, sse.any_done))
    assert watching(conversation)

    del response
    gc.collect()

    assert not watching(conversation)


async def test_client_that_disconnects_while_the_view_runs_stops_watching(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=5, token_delay=0.05)
    headers = {**await atoken_headers(user), **SSE, "Content-Type": "application/json"}
    client = ApplicationCommunicator(
        application, http_scope("POST", url(conversation, "messages"), headers)
    )
    await client.send_input({"type": "http.request", "body": b'{"content": "Hello"}'})
    await client.send_input({"type": "http.disconnect"})
    await client.wait(5)

    assert not watching(conversation)
    async with asyncio.timeout(5):
        await wait_until(lambda: chats.service().replies.running(conversation.pk) is None)


async def test_sse_retried_client_msg_id_follows_the_running_reply(llm, user, conversation):
    llm.behaviour = Behaviour(tokens=40, token_delay=0.01)
    client = await logged_in_client(user)
    data = {"content": "Once", "client_msg_id": str(uuid.uuid4())}
    first = EventReader(await post(client, url(conversation, "messages"), data, **SSE))
    await first.until(is_type("delta"))
    await first.close()

    retry = await post(client, url(conversation, "messages"), data, **SSE)

    events = await EventReader(retry).rest()
    state, done = events[0], events[-1]
    assert state.event == "state" and done.event == "done"
    assert [m["content"] for m in state.data["messages"] if m["role"] == "user"] == ["Once"]
    streaming = state.data["streaming"]
    assert streaming["content"] + delta_text(events, after=streaming["seq"]) == expected_text(40)
    assert await Message.objects.filter(conversation=conversation).acount() == 2
