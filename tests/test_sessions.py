"""Sessions come from a cache and requests to async views skip Django's per-request thread:
logging out, deactivating an account and changing a password must still end access at once,
and every security check and header must stay."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient

from tests.chat_socket import ChatSocket
from tests.conftest import PASSWORD, logged_in_client, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

MODELS_URL = "/api/models/"


async def socket_close_code(conversation, cookie: str) -> int | None:
    socket = ChatSocket(conversation.id, cookie=cookie)
    await socket.connect()
    await socket.close()
    return None if socket.connected else socket.close_code


async def test_socket_after_logout_is_refused_4401(llm, user, conversation):
    client = await logged_in_client(user)
    cookie = session_cookie(client)
    assert await socket_close_code(conversation, cookie) is None  # the session is now cached
    await client.alogout()
    assert await socket_close_code(conversation, cookie) == 4401


async def test_logging_out_closes_the_open_sockets_of_that_session(llm, user, conversation):
    """A logout through the page's button closes that session's open tabs at once; the
    same user's other sessions (another browser) stay open."""
    client, elsewhere = await logged_in_client(user), await logged_in_client(user)
    tab = ChatSocket(conversation.id, cookie=session_cookie(client))
    other_browser = ChatSocket(conversation.id, cookie=session_cookie(elsewhere))
    await tab.connect()
    await other_browser.connect()
    assert tab.connected and other_browser.connected

    assert (await client.post("/accounts/logout/")).status_code == 302

    assert await tab.communicator.receive_output(5) == {"type": "websocket.close", "code": 4401}
    assert await other_browser.nothing_more()
    await other_browser.close()


async def test_socket_of_deactivated_user_is_refused_4401(llm, user, conversation):
    cookie = session_cookie(await logged_in_client(user))
    assert await socket_close_code(conversation, cookie) is None
    user.is_active = False
    await user.asave(update_fields=["is_active"])
    assert await socket_close_code(conversation, cookie) == 4401


async def test_socket_after_password_change_is_refused_4401(llm, user, conversation):
    cookie = session_cookie(await logged_in_client(user))
    assert await socket_close_code(conversation, cookie) is None
    await sync_to_async(user.set_password)("a new password, elsewhere")
    await user.asave(update_fields=["password"])
    assert await socket_close_code(conversation, cookie) == 4401


async def test_api_after_logout_is_401(user):
    client = await logged_in_client(user)
    cookie = session_cookie(client)
    assert (await client.get(MODELS_URL)).status_code == 200
    await client.alogout()
    stale = AsyncClient(headers={"cookie": cookie})
    assert (await stale.get(MODELS_URL)).status_code == 401


async def test_api_of_deactivated_user_is_401(user):
    client = await logged_in_client(user)
    assert (await client.get(MODELS_URL)).status_code == 200
    user.is_active = False
    await user.asave(update_fields=["is_active"])
    assert (await client.get(MODELS_URL)).status_code == 401


async def test_async_api_without_csrf_token_is_403(user):
    client = await logged_in_client(user, enforce_csrf_checks=True)
    response = await client.post("/api/conversations/", "{}", content_type="application/json")
    assert response.status_code == 403


async def test_async_api_keeps_security_headers(user):
    response = await (await logged_in_client(user)).get(MODELS_URL)
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    assert "Cookie" in response["Vary"]


async def test_logging_in_through_asgi_saves_the_session(user):
    """The session middleware's response step still saves a session that changed."""
    client = AsyncClient()
    response = await client.post(
        "/accounts/login/", {"username": user.username, "password": PASSWORD}
    )
    assert response.status_code == 302
    assert (await client.get(MODELS_URL)).status_code == 200
    await client.alogout()
    assert (await client.get(MODELS_URL)).status_code == 401


async def test_messages_added_through_asgi_are_stored_and_shown_once():
    """The message middleware's response step still stores messages that were added."""
    admin = await sync_to_async(get_user_model().objects.create_superuser)("root", "", PASSWORD)
    client = await logged_in_client(admin)
    # Any admin save reports with a message (transcripts are read-only there, groups are not).
    assert (await client.post("/admin/auth/group/add/", {"name": "Readers"})).status_code == 302
    shown = (await client.get("/admin/auth/group/")).content.decode()
    assert "was added successfully" in shown
    again = (await client.get("/admin/auth/group/")).content.decode()
    assert "was added successfully" not in again
