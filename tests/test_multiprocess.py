"""Two ASGI processes of one site, sharing the database and Redis: a tab on one process
stops the reply that the other process runs, and a logout on one closes the tabs of that
session on the other."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from chat.models import Message
from tests.live_daphne import serve
from tests.live_tabs import REDIS_URL, next_frame
from tests.llm_server import Behaviour
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


async def test_stop_reaches_the_reply_another_process_runs(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=400, token_delay=0.02)
    cookie = await login_cookie(user)
    path = f"/ws/conversations/{conversation.id}/"
    with (
        serve(llm_server, REDIS_URL=REDIS_URL) as one,
        serve(llm_server, REDIS_URL=REDIS_URL) as two,
    ):
        async with (
            aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
            http.ws_connect(one.url.replace("http", "ws") + path, origin=one.url) as tab_one,
            http.ws_connect(two.url.replace("http", "ws") + path, origin=two.url) as tab_two,
        ):
            assert (await next_frame(tab_one))["type"] == "state"
            assert (await next_frame(tab_two))["type"] == "state"
            await tab_one.send_json(
                {"type": "send", "content": "Long one", "client_msg_id": str(uuid.uuid4())}
            )
            while (await next_frame(tab_one))["type"] != "delta":
                pass

            await tab_two.send_json({"type": "stop"})

            while (frame := await next_frame(tab_one))["type"] != "done":
                pass
            assert frame["status"] == "stopped"
    async with asyncio.timeout(5):
        await wait_until(lambda: llm_server.disconnects == 1)
    reply = await Message.objects.aget(pk=frame["message_id"])
    assert reply.status == "stopped" and reply.content


async def test_logging_out_on_one_process_closes_the_tabs_on_another(
    llm_server, user, conversation, login_cookie
):
    cookie = await login_cookie(user)
    path = f"/ws/conversations/{conversation.id}/"
    csrf = "b" * 32  # any 32-character secret, sent both as cookie and header
    with (
        serve(llm_server, REDIS_URL=REDIS_URL) as one,
        serve(llm_server, REDIS_URL=REDIS_URL) as two,
    ):
        async with (
            aiohttp.ClientSession(headers={"Cookie": f"{cookie}; csrftoken={csrf}"}) as http,
            http.ws_connect(two.url.replace("http", "ws") + path, origin=two.url) as tab_two,
        ):
            assert (await next_frame(tab_two))["type"] == "state"

            logout = await http.post(
                one.url + "/accounts/logout/",
                headers={"X-CSRFToken": csrf, "Origin": one.url, "Referer": one.url + "/"},
                allow_redirects=False,
            )
            assert logout.status == 302

            closing = await tab_two.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401


async def test_the_sockets_per_user_cap_holds_over_processes(
    llm_server, user, conversation, login_cookie
):
    """CHAT_SOCKETS_PER_USER counts the user's sockets on every process: with a cap of 2,
    one open on each process, a third is refused on either; one closing makes room."""
    cookie = await login_cookie(user)
    path = f"/ws/conversations/{conversation.id}/"
    settings = {"REDIS_URL": REDIS_URL, "CHAT_SOCKETS_PER_USER": "2"}
    with serve(llm_server, **settings) as one, serve(llm_server, **settings) as two:
        async with aiohttp.ClientSession(headers={"Cookie": cookie}) as http:

            def tab(server: Any) -> Any:
                return http.ws_connect(server.url.replace("http", "ws") + path, origin=server.url)

            async with tab(one) as tab_one, tab(two) as tab_two:
                assert (await next_frame(tab_one))["type"] == "state"
                assert (await next_frame(tab_two))["type"] == "state"
                for server in (one, two):
                    async with tab(server) as third:
                        closing = await third.receive(timeout=10)
                        assert closing.type == aiohttp.WSMsgType.CLOSE
                        assert closing.data == 4429

                await tab_one.close()
                async with asyncio.timeout(5):
                    while True:  # the close reaches Redis just after the socket closes
                        async with tab(two) as third:
                            if (await third.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                                break
