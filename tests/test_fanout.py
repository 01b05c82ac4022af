"""Every frame of a conversation reaches its tabs on every process (`chat.fanout`): two
daphne processes on one database and one Redis, a reply run by one, watched from both,
joined mid-reply on the other, reattached over SSE on the other, and mended after the
other's Redis connection is cut mid-reply."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from chat.models import Message
from tests.api_client import atoken_headers
from tests.live_daphne import LiveServer, serve
from tests.live_tabs import REDIS_URL
from tests.llm_server import Behaviour, expected_text

pytestmark = pytest.mark.django_db(transaction=True)

FRAME_TIMEOUT = 10.0


class Tab:
    """A websocket tab and the text it shows of the running reply, checked as it goes:
    deltas count on by one from the last `state` (or from nothing), none twice."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.frames: list[dict[str, Any]] = []
        self.text = ""
        self.seq = 0
        self.states = 0

    async def next(self) -> dict[str, Any]:
        message = await self.socket.receive(timeout=FRAME_TIMEOUT)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        frame: dict[str, Any] = json.loads(message.data)
        self.frames.append(frame)
        if frame["type"] == "state":
            self.states += 1
            streaming = frame["streaming"]
            self.text, self.seq = (
                (streaming["content"], streaming["seq"]) if streaming else ("", 0)
            )
        elif frame["type"] == "message" and frame["message"]["status"] == "streaming":
            self.text, self.seq = frame["message"]["content"], 0  # a new reply begins
        elif frame["type"] == "delta":
            assert frame["seq"] == self.seq + 1, (frame["seq"], self.seq)
            self.seq = frame["seq"]
            self.text += frame["text"]
        return frame

    async def until(self, kind: str) -> dict[str, Any]:
        while (frame := await self.next())["type"] != kind:
            pass
        return frame


@asynccontextmanager
async def two_processes(llm_server: Any) -> AsyncIterator[tuple[LiveServer, LiveServer]]:
    with (
        serve(llm_server, REDIS_URL=REDIS_URL) as one,
        serve(llm_server, REDIS_URL=REDIS_URL) as two,
    ):
        yield one, two


def socket_url(server: LiveServer, conversation: Any) -> str:
    return server.url.replace("http", "ws") + f"/ws/conversations/{conversation.id}/"


def send_frame(content: str) -> dict[str, Any]:
    return {"type": "send", "content": content, "client_msg_id": str(uuid.uuid4())}


async def test_a_tab_on_each_process_sees_every_frame(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=60, token_delay=0.01)
    cookie = await login_cookie(user)
    async with (
        two_processes(llm_server) as (one, two),
        aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
        http.ws_connect(socket_url(one, conversation), origin=one.url) as socket_one,
        http.ws_connect(socket_url(two, conversation), origin=two.url) as socket_two,
    ):
        tab_one, tab_two = Tab(socket_one), Tab(socket_two)
        await tab_one.until("state")
        await tab_two.until("state")

        await socket_one.send_json(send_frame("Hello"))

        done_one, done_two = await asyncio.gather(tab_one.until("done"), tab_two.until("done"))

    assert done_one == done_two
    assert tab_one.text == tab_two.text == done_two["content"] == expected_text(60)
    kinds = [f["type"] for f in tab_two.frames]
    assert kinds.count("message") == 2 and kinds.count("state") == 1
    stored = await Message.objects.aget(pk=done_two["message_id"])
    assert stored.content == tab_two.text


async def test_a_tab_that_opens_mid_reply_on_the_other_process(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=120, token_delay=0.01)
    cookie = await login_cookie(user)
    async with (
        two_processes(llm_server) as (one, two),
        aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
        http.ws_connect(socket_url(one, conversation), origin=one.url) as socket_one,
    ):
        tab_one = Tab(socket_one)
        await tab_one.until("state")
        await socket_one.send_json(send_frame("Hello"))
        for _ in range(3):
            await tab_one.until("delta")

        async with http.ws_connect(socket_url(two, conversation), origin=two.url) as socket_two:
            tab_two = Tab(socket_two)
            state = await tab_two.until("state")
            done = await tab_two.until("done")
        await tab_one.until("done")

    assert state["streaming"] is not None and state["streaming"]["seq"] >= 3
    assert tab_two.text == tab_one.text == done["content"] == expected_text(120)


async def test_sse_reattaches_on_the_other_process_after_delta_k(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=120, token_delay=0.01)
    cookie = await login_cookie(user)
    headers = await atoken_headers(user)
    async with (
        two_processes(llm_server) as (one, two),
        aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
        http.ws_connect(socket_url(one, conversation), origin=one.url) as socket_one,
    ):
        tab_one = Tab(socket_one)
        await tab_one.until("state")
        await socket_one.send_json(send_frame("Hello"))
        for _ in range(4):
            await tab_one.until("delta")
        seen, text_seen = tab_one.seq, tab_one.text

        events = f"{two.url}/api/conversations/{conversation.id}/events/?after={seen}"
        async with http.get(events, headers=headers) as response:
            assert response.status == 200
            body = (await response.read()).decode()
        await tab_one.until("done")

    frames = [
        json.loads(line.removeprefix("data: "))
        for line in body.splitlines()
        if line.startswith("data: ")
    ]
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(seen + 1, seen + 1 + len(deltas)))
    assert frames[-1]["type"] == "done"
    assert text_seen + "".join(d["text"] for d in deltas) == expected_text(120)


async def test_frames_lost_on_a_cut_connection_are_mended(
    llm_server, user, conversation, login_cookie
):
    """Redis cuts the other process's subscriber mid-reply: what was published meanwhile
    never reaches it. Its tab gets a fresh `state` once it hears again, and the text
    goes on from there, whole, with no delta twice."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=300, token_delay=0.01)
    cookie = await login_cookie(user)
    redis = Redis.from_url(REDIS_URL)
    async with (
        two_processes(llm_server) as (one, two),
        aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
        http.ws_connect(socket_url(one, conversation), origin=one.url) as socket_one,
        http.ws_connect(socket_url(two, conversation), origin=two.url) as socket_two,
    ):
        tab_one, tab_two = Tab(socket_one), Tab(socket_two)
        await tab_one.until("state")
        await tab_two.until("state")
        await socket_one.send_json(send_frame("Hello"))
        for _ in range(3):
            await tab_two.until("delta")

        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "SKIPME", "yes")
        assert killed >= 1

        done = await tab_two.until("done")
        await tab_one.until("done")
    await redis.aclose()

    assert tab_two.states == 2  # the first, and the one that mended the cut
    assert tab_two.text == done["content"] == tab_one.text == expected_text(300)


async def test_a_rename_on_one_process_reaches_a_tab_on_the_other(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    cookie = await login_cookie(user)
    headers = await atoken_headers(user)
    async with (
        two_processes(llm_server) as (one, two),
        aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
        http.ws_connect(socket_url(two, conversation), origin=two.url) as socket_two,
    ):
        tab_two = Tab(socket_two)
        await tab_two.until("state")

        path = f"{one.url}/api/conversations/{conversation.id}/"
        async with http.patch(path, json={"title": "Renamed"}, headers=headers) as response:
            assert response.status == 200

        frame = await tab_two.until("conversation")
    assert frame["conversation"]["title"] == "Renamed"


async def test_regenerate_and_edit_from_the_other_process(
    llm_server, user, conversation, login_cookie
):
    """History rewritten from a tab on one process (regenerate, then edit) reaches the tab
    on the other: the messages dropped, the new reply streamed whole."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=20, token_delay=0.005)
    cookie = await login_cookie(user)
    async with (
        two_processes(llm_server) as (one, two),
        aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
        http.ws_connect(socket_url(one, conversation), origin=one.url) as socket_one,
        http.ws_connect(socket_url(two, conversation), origin=two.url) as socket_two,
    ):
        tab_one, tab_two = Tab(socket_one), Tab(socket_two)
        await tab_one.until("state")
        await tab_two.until("state")
        await socket_one.send_json(send_frame("First"))
        first = await tab_two.until("done")
        await tab_one.until("done")

        await socket_two.send_json({"type": "regenerate"})
        removed = await tab_one.until("removed")
        regenerated = await tab_one.until("done")

        question = next(
            f["message"]["id"]
            for f in tab_one.frames
            if f["type"] == "message" and f["message"]["role"] == "user"
        )
        await socket_two.send_json({"type": "edit", "message_id": question, "content": "Edited"})
        dropped = [(await tab_one.until("removed"))["message_id"]]
        edited = await tab_one.until("done")
        await tab_two.until("done")

    assert removed["message_id"] == first["message_id"]
    assert regenerated["message_id"] != first["message_id"]
    assert regenerated["content"] == expected_text(20)
    assert dropped == [regenerated["message_id"]]
    assert edited["status"] == "complete" and edited["content"] == expected_text(20)
    stored = [m async for m in Message.objects.filter(conversation=conversation)]
    assert sorted((m.role, m.content) for m in stored) == [
        ("assistant", expected_text(20)),
        ("user", "Edited"),
    ]
