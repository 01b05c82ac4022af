"""A server that stops mid-reply saves the reply: all text streamed so far, `interrupted`."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import aiohttp
import pytest

from chat.models import Message
from tests.live_daphne import serve
from tests.llm_server import Behaviour, expected_text
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


async def test_server_stop_saves_running_reply_as_interrupted(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=400, token_delay=0.02)
    cookie = await login_cookie(user)
    streamed = ""
    with serve(llm_server) as server:
        url = f"{server.url.replace('http', 'ws')}/ws/conversations/{conversation.id}/"
        async with (
            aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
            http.ws_connect(url, origin=server.url) as socket,
        ):
            assert json.loads((await socket.receive()).data)["type"] == "state"
            await socket.send_json(
                {"type": "send", "content": "Go", "client_msg_id": str(uuid.uuid4())}
            )
            while len(streamed) < 60:
                frame = json.loads((await socket.receive(timeout=10)).data)
                if frame["type"] == "delta":
                    streamed += frame["text"]
            server.process.send_signal(signal.SIGTERM)
            async for message in socket:  # whatever comes before the socket closes
                if message.type == aiohttp.WSMsgType.TEXT:
                    frame = json.loads(message.data)
                    streamed += frame.get("text", "") if frame["type"] == "delta" else ""
        async with asyncio.timeout(15):
            await wait_until(lambda: server.process.poll() is not None)

    reply = await Message.objects.aget(conversation=conversation, role="assistant")
    assert (reply.status, reply.error_code) == ("interrupted", "interrupted")
    # Everything the user saw is saved, even what came after the last checkpoint.
    assert reply.content.startswith(streamed) and len(reply.content) >= len(streamed)
    assert reply.content != expected_text(400)
    assert llm_server.disconnects == 1
