"""A process that is stopped (SIGTERM) hands its running replies over (`chat.heartbeats`):
each is saved `interrupted`, and a surviving process continues it in the same message,
so a tab sees the text go on and the reply end `complete`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from chat.models import Message
from tests.live_daphne import serve
from tests.live_tabs import REDIS_URL, next_frame
from tests.llm_server import Behaviour, expected_text
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_stopped_process_hands_its_reply_over(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=300, token_delay=0.02)
    cookie = await login_cookie(user)
    path = f"/ws/conversations/{conversation.id}/"
    with (
        serve(llm_server, REDIS_URL=REDIS_URL) as survivor,
        serve(llm_server, REDIS_URL=REDIS_URL) as runner,
    ):
        async with aiohttp.ClientSession(headers={"Cookie": cookie}) as http:

            def tab(server: Any) -> Any:
                return http.ws_connect(server.url.replace("http", "ws") + path, origin=server.url)

            async with tab(runner) as sender, tab(survivor) as watching:
                for socket in (sender, watching):
                    assert (await next_frame(socket))["type"] == "state"
                await sender.send_json(
                    {"type": "send", "content": "Long", "client_msg_id": str(uuid.uuid4())}
                )
                while (await next_frame(watching))["type"] != "delta":
                    pass

                runner.process.terminate()  # SIGTERM, as a rolling restart does

                frames = []
                while (frame := await next_frame(watching))["type"] != "done" or (
                    frame["status"] == "interrupted"
                ):
                    frames.append(frame)
                frames.append(frame)

    cut = next(f for f in frames if f["type"] == "done")
    assert cut["status"] == "interrupted"
    continued = next(f for f in frames if f["type"] == "message")
    assert continued["message"]["id"] == cut["message_id"]
    assert continued["message"]["status"] == "streaming"
    assert continued["message"]["content"] == cut["content"]
    done = frames[-1]
    assert done["status"] == "complete" and done["message_id"] == cut["message_id"]
    # The test model starts its text anew when asked to go on; the reply holds both.
    assert done["content"] == cut["content"] + expected_text(300)
    stored = await Message.objects.aget(pk=done["message_id"])
    assert (stored.status, stored.content) == ("complete", done["content"])
    assert await Message.objects.filter(role="assistant").acount() == 1
    assert len(llm_server.requests) == 2  # the reply, and its continuation: once


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
async def test_a_process_with_no_tab_open_takes_the_replies_handed_over(
    server, llm_server, user, conversation, login_cookie
):
    """The survivor has served nothing yet (fresh from its own restart, say): it still
    continues what the stopped process hands over. uvicorn says start and stop through the
    ASGI lifespan protocol, daphne through its reactor (chat.shutdown)."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=100, token_delay=0.02)
    cookie = await login_cookie(user)
    path = f"/ws/conversations/{conversation.id}/"
    with (
        serve(llm_server, server=server, REDIS_URL=REDIS_URL) as survivor,
        serve(llm_server, server=server, REDIS_URL=REDIS_URL) as runner,
    ):
        async with (
            aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
            http.ws_connect(runner.url.replace("http", "ws") + path, origin=runner.url) as tab,
        ):
            assert (await next_frame(tab))["type"] == "state"
            await tab.send_json(
                {"type": "send", "content": "Long", "client_msg_id": str(uuid.uuid4())}
            )
            while (await next_frame(tab))["type"] != "delta":
                pass
            runner.process.terminate()

            async def continued() -> bool:
                reply = await Message.objects.aget(role="assistant")
                return reply.status == "complete"

            async with asyncio.timeout(15):
                await wait_until(continued, interval=0.2)
        survivor_log = survivor.log.read_text()
    reply = await Message.objects.aget(role="assistant")
    assert reply.content.endswith(expected_text(100)), survivor_log
    assert len(llm_server.requests) == 2  # the reply, and its continuation on the survivor
