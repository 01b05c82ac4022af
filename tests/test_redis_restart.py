"""A Redis that restarts mid-reply (our own, on a port of its own, keeping nothing) does
not end fan-out, stop or logouts for the rest of the processes' lives: their listeners
come back, join their groups again, and the tabs resync."""

from __future__ import annotations

import shutil
from typing import Any

import aiohttp
import pytest

from bench.processes import free_port
from chat.models import Message
from tests.live_daphne import serve
from tests.live_tabs import send_frame, until
from tests.llm_server import Behaviour, expected_text
from tests.private_redis import redis_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs Debian's redis-server")
async def test_fan_out_stop_and_logouts_outlive_a_redis_restart(
    llm_server, user, conversation, login_cookie, make_conversation
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=300, token_delay=0.01)
    cookie = await login_cookie(user)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    path = f"/ws/conversations/{conversation.id}/"
    with (
        redis_server(port) as first_redis,
        serve(llm_server, REDIS_URL=url) as one,
        serve(llm_server, REDIS_URL=url) as two,
    ):
        async with aiohttp.ClientSession(headers={"Cookie": cookie}) as http:

            def tab(server: Any) -> Any:
                return http.ws_connect(server.url.replace("http", "ws") + path, origin=server.url)

            async with tab(one) as tab_one, tab(two) as tab_two:
                await until(tab_one, "state")
                await until(tab_two, "state")
                await tab_one.send_json(send_frame("Before"))
                await until(tab_two, "delta")

                # Redis restarts mid-reply, forgetting everything.
                first_redis.terminate()
                first_redis.wait(5)
                with redis_server(port):
                    # The reply goes on; the tab on the other process resyncs and
                    # ends with the whole text.
                    done = await until(tab_two, "done")
                    assert done["content"] == expected_text(300)
                    await until(tab_one, "done")

                    # Fan-out and stop, after the restart: a reply on one, stopped
                    # from the other, seen on both.
                    llm_server.behaviour = Behaviour(tokens=2000, token_delay=0.01)
                    await tab_one.send_json(send_frame("After"))
                    await until(tab_two, "delta")
                    await tab_two.send_json({"type": "stop"})
                    stopped = await until(tab_two, "done")
                    assert stopped["status"] == "stopped"
                    assert (await until(tab_one, "done")) == stopped

                    # A logout on one closes the session's tab on the other.
                    csrf = "c" * 32
                    logout = await http.post(
                        one.url + "/accounts/logout/",
                        headers={
                            "Cookie": f"{cookie}; csrftoken={csrf}",
                            "X-CSRFToken": csrf,
                            "Origin": one.url,
                            "Referer": one.url + "/",
                        },
                        allow_redirects=False,
                    )
                    assert logout.status == 302
                    while True:
                        closing = await tab_two.receive(timeout=15)
                        if closing.type != aiohttp.WSMsgType.TEXT:
                            break
                    assert closing.type == aiohttp.WSMsgType.CLOSE
                    assert closing.data == 4401
    reply = await Message.objects.aget(pk=stopped["message_id"])
    assert reply.status == "stopped"
