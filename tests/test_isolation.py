"""One item's failure stays with that item: a poisoned item in each kind of batch (socket
openings, sends, checkpoints, final writes, the API's session lookups) fails alone, and
the others are served.

The poison is real: text the database refuses (a trigger), or a NUL character, which
PostgreSQL refuses in text and which the app replaces where text comes in.
"""

from __future__ import annotations

import asyncio
from importlib import import_module
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.http import HttpRequest

from chat import chats, persistence
from chat.api_auth import users_of
from chat.models import Conversation, Message
from tests import api_client, database_faults
from tests.asgi_client import ApplicationClient, logged_in_application_client
from tests.chat_socket import ChatSocket
from tests.conftest import logged_in_client
from tests.llm_server import Behaviour, expected_text
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

POISON = "poison"


@pytest.fixture
async def triggers():
    yield
    await sync_to_async(database_faults.allow)()


@pytest.fixture
async def conversations(user, make_conversation):
    return [await sync_to_async(make_conversation)(user) for _ in range(3)]


async def test_a_poisoned_cookie_fails_no_other_socket(llm, user, conversations, login_cookie):
    """A session key the database would refuse (Django's cookie parser makes a NUL of
    "\\000") is no session: that socket is refused, those opening beside it are served."""
    cookie = await login_cookie(user)
    name = django_settings.SESSION_COOKIE_NAME
    sockets = [ChatSocket(c.id, cookie=cookie) for c in conversations]
    poisoned = ChatSocket(conversations[0].id, cookie=f'{name}="aaaaaaaa\\000"')
    await asyncio.gather(*(s.connect() for s in [*sockets, poisoned]))
    assert all(s.connected for s in sockets)
    assert not poisoned.connected and poisoned.close_code == 4401
    for socket in sockets:
        await socket.close()


async def test_a_send_the_database_refuses_fails_alone(llm, user, conversations, triggers):
    llm.behaviour = Behaviour(tokens=3)
    await sync_to_async(database_faults.refuse)("INSERT", f"NEW.content = '{POISON}'")
    service = chats.service()
    contents = ["first", POISON, "third"]
    results = await asyncio.gather(
        *(
            service.send(user.pk, c.id, content)
            for c, content in zip(conversations, contents, strict=True)
        ),
        return_exceptions=True,
    )
    good = [results[0], results[2]]
    assert isinstance(results[1], Exception)
    for started in good:
        assert not isinstance(started, BaseException)
        message = await service.finished(started)
        assert message is not None and message.content == expected_text(3)
    assert not await Message.objects.filter(conversation=conversations[1]).aexists()


async def test_text_with_nul_is_stored_with_a_replacement(llm, user, conversations, open_socket):
    """Text the database refuses is decided about once, where it comes in: a NUL or a lone
    surrogate, from the user or from the model, becomes U+FFFD."""
    llm.models["nul"] = Behaviour(words=["a\x00", "b\ud800", "c"])
    conversation = conversations[0]
    conversation.model = "nul"
    await conversation.asave(update_fields=["model"])
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="hi\x00 there\ud800")
    frames = await socket.receive_until("done")
    assert frames[0]["message"]["content"] == "hi\ufffd there\ufffd"
    assert frames[-1]["status"] == "complete"
    assert frames[-1]["content"] == "a\ufffdb\ufffdc"
    stored = [m.content async for m in Message.objects.filter(conversation=conversation)]
    assert stored == ["hi\ufffd there\ufffd", "a\ufffdb\ufffdc"]


async def test_a_checkpoint_the_database_refuses_fails_alone(
    llm, user, conversations, triggers, settings
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.05
    llm.models["poisoned"] = Behaviour(words=[f"{POISON} "] * 300, token_delay=0.01)
    llm.behaviour = Behaviour(tokens=300, token_delay=0.01)
    await sync_to_async(database_faults.refuse)(
        "UPDATE", f"NEW.status = 'streaming' AND NEW.content LIKE '%{POISON}%'"
    )
    poisoned, healthy = conversations[0], conversations[1]
    poisoned.model = "poisoned"
    await poisoned.asave(update_fields=["model"])
    service = chats.service()
    started = [await service.send(user.pk, c.id, "Hello") for c in (poisoned, healthy)]

    async def checkpointed(started: chats.Started) -> bool:
        assert started.assistant_message is not None
        message = await Message.objects.aget(pk=started.assistant_message.pk)
        return bool(message.content)

    async with asyncio.timeout(5):
        await wait_until(lambda: checkpointed(started[1]))
    assert not await checkpointed(started[0])
    poisoned_reply = service.replies.running(poisoned.id)
    assert poisoned_reply is not None and poisoned_reply.checkpointed_seq == 0
    for one in started:
        await service.stop(user.pk, one.assistant_message.conversation_id)  # type: ignore[union-attr]
        message = await service.finished(one)
        assert message is not None and message.status == "stopped" and message.content


async def test_a_final_write_the_database_refuses_fails_alone(llm, user, conversations, triggers):
    llm.models["poisoned"] = Behaviour(words=[POISON])
    llm.behaviour = Behaviour(tokens=3)
    await sync_to_async(database_faults.refuse)(
        "UPDATE", f"NEW.status <> 'streaming' AND NEW.content LIKE '%{POISON}%'"
    )
    poisoned = conversations[0]
    poisoned.model = "poisoned"
    await poisoned.asave(update_fields=["model"])
    service = chats.service()
    started = await asyncio.gather(*(service.send(user.pk, c.id, "Hello") for c in conversations))
    for healthy in started[1:]:
        message = await service.finished(healthy)
        assert message is not None and message.status == "complete"
        assert healthy.assistant_message is not None
        stored = await Message.objects.aget(pk=healthy.assistant_message.pk)
        assert (stored.status, stored.content) == ("complete", expected_text(3))
    # The poisoned reply is still being saved, and runs until it is.
    assert service.replies.running(poisoned.id) is not None
    await sync_to_async(database_faults.allow)()
    message = await service.finished(started[0])
    assert message is not None and (message.status, message.content) == ("complete", POISON)


async def test_a_poisoned_cookie_fails_no_other_api_request(llm, user, conversations):
    """API requests look their sessions up in batches (`chat.api_auth`, `chat.sse_routes`):
    one whose session key the database would refuse is no login (401), and those arriving
    with it, on a JSON route and an event stream, are served."""
    events_url = api_client.url(conversations[0], "events")
    paths = [api_client.LIST_URL, events_url] * 4
    clients = [await logged_in_application_client(user) for _ in paths]
    poisoned = ApplicationClient()
    poisoned.cookies[django_settings.SESSION_COOKIE_NAME] = "aaaaaaaa\x00"
    # The poisoned requests among the others, on each route.
    requests = [(c, p) for c, p in zip(clients, paths, strict=True)]
    requests[2:2] = [(poisoned, api_client.LIST_URL), (poisoned, events_url)]

    responses = await asyncio.gather(*(client.get(path) for client, path in requests))

    served = [r for (client, _), r in zip(requests, responses, strict=True) if client in clients]
    refused = [r for (client, _), r in zip(requests, responses, strict=True) if client is poisoned]
    assert [r.status_code for r in refused] == [401, 401]
    assert all(r.json()["error"]["code"] == "unauthorized" for r in refused)
    assert [r.status_code for r in served] == [200] * len(paths)
    for path, response in zip(paths, served, strict=True):
        if path == events_url:
            events = api_client.EventReader(response)
            first = await events.next()
            assert first is not None and first.event == "state"
            await events.close()
        else:
            assert len(response.json()["results"]) == len(conversations)


async def test_a_session_the_database_refuses_fails_its_lookup_alone(user):
    """Past the cookie's check, the batched lookup itself answers each request alone: a
    session key the database refuses (PostgreSQL, NUL) is that request's failure."""
    good = [(await logged_in_client(user)).session.session_key for _ in range(2)]
    store = import_module(django_settings.SESSION_ENGINE).SessionStore
    requests: list[HttpRequest] = []
    for key in [good[0], "aaaaaaaa\x00", good[1]]:
        request = HttpRequest()
        request.session = store(key)
        requests.append(request)

    users = await sync_to_async(users_of)(requests)

    assert [getattr(u, "pk", None) for u in (users[0], users[2])] == [user.pk, user.pk]
    assert isinstance(users[1], Exception) or not users[1].is_authenticated


async def test_a_create_the_database_refuses_fails_alone(user):
    """Conversations created together share one INSERT; one the database refuses is that
    request's error, and the others are made."""
    await sync_to_async(database_faults.refuse)(
        "INSERT", f"NEW.title = '{POISON}'", table="chat_conversation"
    )
    try:
        service = chats.service()
        results = await asyncio.gather(
            *(service.create(user.pk, title=title) for title in ["first", POISON, "third"]),
            return_exceptions=True,
        )
    finally:
        await sync_to_async(database_faults.allow)("chat_conversation")
    assert isinstance(results[1], Exception)
    assert [getattr(r, "title", r) for r in (results[0], results[2])] == ["first", "third"]
    titles = {c.title async for c in Conversation.objects.filter(owner=user)}
    assert titles == {"first", "third"}


async def test_a_message_with_nul_keeps_its_batch_in_one_transaction(
    llm, user, conversations, monkeypatch
):
    """A NUL is replaced where text comes in, so the database never refuses it: sends that
    arrive with it are stored together, not each alone after a failure."""
    llm.behaviour = Behaviour(tokens=2)
    writes: list[int] = []
    post = persistence._post

    def recorded(sends: Any) -> Any:
        writes.append(len(sends))
        return post(sends)

    monkeypatch.setattr(persistence, "_post", recorded)
    service = chats.service()
    started = await asyncio.gather(
        *(
            service.send(user.pk, c.id, content)
            for c, content in zip(conversations, ["one", "two\x00", "three"], strict=True)
        )
    )
    for each in started:
        await service.finished(each)

    assert writes == [3]  # one write for the three, never one each after a failure
    stored = await Message.objects.aget(conversation=conversations[1], role="user")
    assert stored.content == "two\ufffd"
