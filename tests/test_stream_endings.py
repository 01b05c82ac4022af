"""Whatever ends a session ends what it opened: a logout, a password change, a
deactivation, an expired or a deleted session closes its sockets (4401) and ends its SSE
streams (one `error` event, `unauthorized`), on every process; frames a socket sends after
its close are dropped. The reply itself goes on and is saved: closing a tab is not a stop.

A logout and a revoked token end them at once (`chat.logouts`, `chat.crossprocess`); the
other ends at the next session check (`chat.session_checks`, CHAT_SESSION_CHECK_SECONDS).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.contrib.sessions.models import Session
from django.test import AsyncClient
from django.utils import timezone

from chat import chats
from chat.models import Message
from chat.tokens import issue_token
from tests.api_client import SSE, Event, EventReader, is_type, parse, url
from tests.asgi_client import logged_in_application_client
from tests.chat_socket import ChatSocket
from tests.conftest import logged_in_client, session_cookie
from tests.live_daphne import LiveServer, serve
from tests.live_tabs import REDIS_URL
from tests.llm_server import Behaviour
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

AT_ONCE = 3600.0  # seconds between session checks: none runs during the test
CHECKED = 0.05  # seconds between session checks


# --- How a session ends -------------------------------------------------------------------


async def log_out(client: AsyncClient, user: Any) -> None:
    """Through the page's button, with the session's own cookie."""
    assert (await client.post("/accounts/logout/")).status_code == 302


async def change_password(client: AsyncClient, user: Any) -> None:
    user.set_password("a brand new passphrase")
    await user.asave(update_fields=["password"])


async def deactivate(client: AsyncClient, user: Any) -> None:
    user.is_active = False
    await user.asave(update_fields=["is_active"])


async def delete_session(client: AsyncClient, user: Any) -> None:
    await Session.objects.filter(session_key=client.session.session_key).adelete()


async def expire_session(client: AsyncClient, user: Any) -> None:
    past = timezone.now() - timedelta(seconds=1)
    await Session.objects.filter(session_key=client.session.session_key).aupdate(expire_date=past)


CHECKED_ENDS = [change_password, deactivate, delete_session, expire_session]
# Each end with the checks' interval it needs: a logout needs no check at all.
ENDS = [pytest.param(log_out, AT_ONCE, id="log_out")] + [
    pytest.param(end, CHECKED, id=end.__name__) for end in CHECKED_ENDS
]


async def client_of(kind: str, user: Any) -> AsyncClient:
    """A logged-in client: Django's test client, or one served by the whole ASGI
    application (the event streams answered in front of Django, `chat.sse_routes`)."""
    if kind == "application":
        return await logged_in_application_client(user)
    return await logged_in_client(user)


async def stream_a_reply(client: AsyncClient, conversation: Any) -> EventReader:
    """A reply asked for over SSE, read up to its first delta."""
    response = await client.post(
        url(conversation, "messages"),
        json.dumps({"content": "Hello"}),
        content_type="application/json",
        headers=SSE,
    )
    assert response.status_code == 200
    events = EventReader(response)
    await events.until(is_type("delta"))
    return events


# --- In one process -------------------------------------------------------------------------


@pytest.mark.parametrize("client_kind", ["django", "application"])
@pytest.mark.parametrize(("end", "check_seconds"), ENDS)
async def test_an_sse_stream_ends_with_its_session(
    llm,
    user,
    other_user,
    conversation,
    make_conversation,
    settings,
    client_kind,
    end,
    check_seconds,
):
    settings.CHAT_SESSION_CHECK_SECONDS = check_seconds
    llm.behaviour = Behaviour(tokens=300, token_delay=0.01)
    client, others = await client_of(client_kind, user), await client_of(client_kind, other_user)
    theirs = await sync_to_async(make_conversation)(other_user)
    events = await stream_a_reply(client, conversation)
    bystander = await stream_a_reply(others, theirs)

    await end(client, user)

    async with asyncio.timeout(5):
        rest = await events.rest()
    assert rest[-1].event == "error" and rest[-1].data["code"] == "unauthorized"
    assert not any(event.event == "done" for event in rest)
    async with asyncio.timeout(10):
        theirs_rest = await bystander.rest()
    assert theirs_rest[-1].event == "done" and theirs_rest[-1].data["status"] == "complete"
    async with asyncio.timeout(10):
        await wait_until(lambda: chats.service().replies.running(conversation.id) is None)
    message = await Message.objects.aget(conversation=conversation, role="assistant")
    assert message.status == "complete"


@pytest.mark.parametrize(("end", "check_seconds"), ENDS)
async def test_frames_after_a_session_ends_are_dropped(
    llm, user, other_user, conversation, make_conversation, settings, end, check_seconds
):
    """The socket closes with 4401; a frame it sends after the close starts nothing and
    stores nothing; another user's socket stays open and is served."""
    settings.CHAT_SESSION_CHECK_SECONDS = check_seconds
    client, others = await logged_in_client(user), await logged_in_client(other_user)
    theirs = await sync_to_async(make_conversation)(other_user)
    tab = ChatSocket(conversation.id, cookie=session_cookie(client))
    bystander = ChatSocket(theirs.id, cookie=session_cookie(others))
    await tab.connect()
    await bystander.connect()
    assert tab.connected and bystander.connected

    await end(client, user)

    closing = await tab.communicator.receive_output(5)
    assert closing == {"type": "websocket.close", "code": 4401}
    await tab.send(type="send", content="after the close", client_msg_id=str(uuid.uuid4()))
    # The consumer takes its messages in order: once the disconnect is through, so is the
    # frame before it.
    await tab.communicator.disconnect(timeout=5)
    assert not await Message.objects.filter(conversation=conversation).aexists()
    assert chats.service().replies.running(conversation.id) is None
    assert await bystander.nothing_more()
    await bystander.send(type="send", content="still here")
    assert (await bystander.receive_until("done"))[-1]["status"] == "complete"
    await bystander.close()
    assert [request["messages"][-1]["content"] for request in llm.requests] == ["still here"]


# --- On every process ----------------------------------------------------------------------


def ws_url(server: LiveServer, conversation: Any) -> str:
    return server.url.replace("http", "ws") + f"/ws/conversations/{conversation.id}/"


async def next_frame(socket: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads((await socket.receive(timeout=10)).data)
    return frame


async def events_of(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """The events of a live server's SSE answer, as they come."""
    block = ""
    async for line in response.content:
        text = line.decode()
        if text.strip():
            block += text
            continue
        if block and (event := parse(block)) is not None:
            yield event
        block = ""


@pytest.mark.parametrize("end", CHECKED_ENDS)
async def test_a_session_that_ends_closes_its_tabs_on_every_process(
    llm_server, user, other_user, conversation, make_conversation, end
):
    """Each process checks the sessions of its own sockets against the database: the tabs
    of the ended session close on both processes, another user's tab stays open."""
    llm_server.reset()
    client, others = await logged_in_client(user), await logged_in_client(other_user)
    theirs = await sync_to_async(make_conversation)(other_user)
    environment = {"REDIS_URL": REDIS_URL, "CHAT_SESSION_CHECK_SECONDS": "0.2"}
    with serve(llm_server, **environment) as one, serve(llm_server, **environment) as two:
        async with (
            aiohttp.ClientSession(headers={"Cookie": session_cookie(client)}) as http,
            aiohttp.ClientSession(headers={"Cookie": session_cookie(others)}) as other_http,
            http.ws_connect(ws_url(one, conversation), origin=one.url) as tab_one,
            http.ws_connect(ws_url(two, conversation), origin=two.url) as tab_two,
            other_http.ws_connect(ws_url(two, theirs), origin=two.url) as bystander,
        ):
            for tab in (tab_one, tab_two, bystander):
                assert (await next_frame(tab))["type"] == "state"

            await end(client, user)

            for tab in (tab_one, tab_two):
                closing = await tab.receive(timeout=10)
                assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401
            with pytest.raises(asyncio.TimeoutError):
                await bystander.receive(timeout=1)  # five checks later, still open


def with_csrf(cookie: str, server: LiveServer) -> dict[str, str]:
    """What a page of `server` sends with a POST: the session and a CSRF cookie and token."""
    csrf = "b" * 32  # any 32-character secret, sent both as cookie and header
    return {
        "Cookie": f"{cookie}; csrftoken={csrf}",
        "X-CSRFToken": csrf,
        "Origin": server.url,
        "Referer": server.url + "/",
    }


@pytest.mark.parametrize("credential", ["token", "session"])
async def test_an_sse_stream_ends_at_once_when_another_process_ends_it(
    llm_server, user, conversation, credential
):
    """A token revoked on the tokens page, or a session logged out, on one process: the
    SSE stream it opened on another process ends at once, told through Redis (no session
    check runs during the test), even where that process holds no socket."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=400, token_delay=0.02)
    owner = session_cookie(await logged_in_client(user))
    token, secret = await sync_to_async(issue_token)(user, "script")
    environment = {"REDIS_URL": REDIS_URL, "CHAT_SESSION_CHECK_SECONDS": str(AT_ONCE)}
    with serve(llm_server, **environment) as one, serve(llm_server, **environment) as two:
        if credential == "token":
            opened_with = {"Authorization": f"Bearer {secret}"}
            ending = (f"/settings/tokens/{token.pk}/revoke/", with_csrf(owner, one))
        else:
            opened_with = with_csrf(owner, two)
            ending = ("/accounts/logout/", with_csrf(owner, one))
        async with aiohttp.ClientSession() as http:
            streamed = await http.post(
                two.url + url(conversation, "messages"),
                json={"content": "Hello"},
                headers={**SSE, **opened_with},
            )
            assert streamed.status == 200
            events = aiter(events_of(streamed))
            while (await anext(events)).event != "delta":
                pass

            path, headers = ending
            ended = await http.post(one.url + path, headers=headers, allow_redirects=False)
            assert ended.status == 302

            async with asyncio.timeout(5):
                rest = [event async for event in events]
            streamed.close()
    assert rest[-1].event == "error" and rest[-1].data["code"] == "unauthorized"
    assert not any(event.event == "done" for event in rest)
