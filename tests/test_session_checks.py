"""A session that ends without a logout (it expires or is deleted, the password changes,
the user is deactivated) closes its open sockets within CHAT_SESSION_CHECK_SECONDS; the
sockets of other sessions stay open."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.sessions.models import Session
from django.test import AsyncClient
from django.utils import timezone

from chat import chats, session_checks
from chat.models import ApiToken, Message
from chat.tokens import credential_key, issue_token, revoke_token
from tests.api_client import SSE, EventReader, is_type, url
from tests.asgi_client import ApplicationClient
from tests.chat_socket import ChatSocket
from tests.conftest import logged_in_client, session_cookie
from tests.llm_server import Behaviour
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


async def change_password(user, session_key):
    user.set_password("a brand new passphrase")
    await user.asave(update_fields=["password"])


async def deactivate(user, session_key):
    user.is_active = False
    await user.asave(update_fields=["is_active"])


async def delete_session(user, session_key):
    await Session.objects.filter(session_key=session_key).adelete()


async def expire_session(user, session_key):
    past = timezone.now() - timedelta(seconds=1)
    await Session.objects.filter(session_key=session_key).aupdate(expire_date=past)


@pytest.mark.parametrize("end", [change_password, deactivate, delete_session, expire_session])
async def test_a_session_that_ends_closes_its_sockets(
    llm, user, other_user, conversation, make_conversation, settings, end
):
    settings.CHAT_SESSION_CHECK_SECONDS = 0.05
    client, others = await logged_in_client(user), await logged_in_client(other_user)
    theirs = await sync_to_async(make_conversation)(other_user)
    tab = ChatSocket(conversation.id, cookie=session_cookie(client))
    bystander = ChatSocket(theirs.id, cookie=session_cookie(others))
    await tab.connect()
    await bystander.connect()
    assert tab.connected and bystander.connected

    await end(user, client.session.session_key)

    closing = await tab.communicator.receive_output(5)
    assert closing == {"type": "websocket.close", "code": 4401}
    await tab.send(type="send", content="after the close")  # dropped, never served
    assert await bystander.nothing_more()
    await bystander.send(type="send", content="still here")
    assert (await bystander.receive_until("done"))[-1]["status"] == "complete"
    await bystander.close()


async def test_checking_many_sessions_takes_two_queries(
    user, other_user, django_assert_max_num_queries
):
    keys = []
    for owner in (user, other_user, user):
        client = await logged_in_client(owner)
        keys.append(client.session.session_key)
    await deactivate(other_user, keys[1])

    def check():
        with django_assert_max_num_queries(2):
            return session_checks.logged_in.func(  # type: ignore[attr-defined]
                keys + ["no-such-session"]
            )

    alive = await sync_to_async(check)()
    assert alive == {keys[0], keys[2]}


async def test_no_check_runs_without_open_sockets(llm, user, conversation, settings):
    settings.CHAT_SESSION_CHECK_SECONDS = 0.01
    client = await logged_in_client(user)
    tab = ChatSocket(conversation.id, cookie=session_cookie(client))
    await tab.connect()
    service = chats.service()
    checks = service._session_checks
    assert checks is not None and not checks.done()
    await tab.close()
    async with asyncio.timeout(2):
        await asyncio.gather(checks, return_exceptions=True)


async def test_an_sse_stream_ends_with_its_session(llm, user, conversation, settings):
    """A stream that a session let in ends with one `error` event when that session
    ends (here by expiring); the reply itself goes on and is saved."""
    settings.CHAT_SESSION_CHECK_SECONDS = 0.05
    llm.behaviour = Behaviour(tokens=300, token_delay=0.01)
    client = await logged_in_client(user)
    response = await client.post(
        url(conversation, "messages"),
        json.dumps({"content": "Hello"}),
        content_type="application/json",
        headers=SSE,
    )
    events = EventReader(response)
    await events.until(is_type("delta"))

    await expire_session(user, client.session.session_key)

    async with asyncio.timeout(5):
        rest = await events.rest()
    assert rest[-1].event == "error" and rest[-1].data["code"] == "unauthorized"
    assert not any(event.event == "done" for event in rest)
    message = await Message.objects.aget(conversation=conversation, role="assistant")
    async with asyncio.timeout(10):
        await wait_until(lambda: chats.service().replies.running(conversation.id) is None)
    await message.arefresh_from_db()
    assert message.status == "complete"


# --- Streams opened with a personal token ---------------------------------------------------


async def revoke_on_the_page(user, token_id):
    """As its owner does, on the tokens page: the stream ends at once, with no check."""
    client = await logged_in_client(user)
    response = await client.post(f"/settings/tokens/{token_id}/revoke/")
    assert response.status_code == 302


async def revoke_elsewhere(user, token_id):
    """As the admin or a script would: the next check ends the stream."""
    await ApiToken.objects.filter(pk=token_id).aupdate(revoked_at=timezone.now())


async def deactivate_owner(user, token_id):
    await deactivate(user, None)


@pytest.mark.parametrize("client_kind", ["django", "application"])
@pytest.mark.parametrize(
    ("end", "check_seconds"),
    [(revoke_on_the_page, 3600.0), (revoke_elsewhere, 0.05), (deactivate_owner, 0.05)],
)
async def test_an_sse_stream_opened_with_a_token_ends_with_it(
    llm, user, conversation, settings, client_kind, end, check_seconds
):
    settings.CHAT_SESSION_CHECK_SECONDS = check_seconds
    llm.behaviour = Behaviour(tokens=300, token_delay=0.01)
    token, secret = await sync_to_async(issue_token)(user, "script")
    client = ApplicationClient() if client_kind == "application" else AsyncClient()
    response = await client.post(
        url(conversation, "messages"),
        json.dumps({"content": "Hello"}),
        content_type="application/json",
        headers={**SSE, "Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 200
    events = EventReader(response)
    await events.until(is_type("delta"))

    await end(user, token.pk)

    async with asyncio.timeout(5):
        rest = await events.rest()
    assert rest[-1].event == "error" and rest[-1].data["code"] == "unauthorized"
    assert not any(event.event == "done" for event in rest)
    async with asyncio.timeout(10):
        await wait_until(lambda: chats.service().replies.running(conversation.id) is None)
    message = await Message.objects.aget(conversation=conversation, role="assistant")
    assert message.status == "complete"


async def test_checking_tokens_takes_one_query(user, other_user, django_assert_max_num_queries):
    mine, _ = await sync_to_async(issue_token)(user, "a")
    revoked, _ = await sync_to_async(issue_token)(user, "b")
    theirs, _ = await sync_to_async(issue_token)(other_user, "c")
    await sync_to_async(revoke_token)(user, revoked.pk)
    await deactivate(other_user, None)
    keys = [credential_key(t.pk) for t in (mine, revoked, theirs)] + ["token:999999"]

    def check():
        with django_assert_max_num_queries(1):
            return session_checks.logged_in.func(keys)  # type: ignore[attr-defined]

    assert await sync_to_async(check)() == {credential_key(mine.pk)}
