"""Three daphne processes on one database and one Redis (issue 11): a tab on each watches
one reply and ends with the stored text; a tab that opens mid-reply on a third process
gets the text so far and every delta after it; and when a fourth process that runs a reply
is killed, exactly one of the three survivors ends it, so that each tab gets one `done`
(tests/test_process_death.py has two survivors)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from chat.models import Message
from tests.live_daphne import LiveServer, serve
from tests.live_tabs import REDIS_URL
from tests.llm_server import Behaviour, FakeLLM, expected_text
from tests.test_fanout import Tab, send_frame, socket_url

pytestmark = pytest.mark.django_db(transaction=True)

NOTICED_WITHIN = 10.0  # seconds, as issue 11 asks


@pytest.fixture(scope="module")
def three(django_db_setup: None, llm_server: FakeLLM) -> Iterator[list[LiveServer]]:
    """Three processes, shared by the module's tests."""
    with (
        serve(llm_server, REDIS_URL=REDIS_URL) as one,
        serve(llm_server, REDIS_URL=REDIS_URL) as two,
        serve(llm_server, REDIS_URL=REDIS_URL) as three,
    ):
        yield [one, two, three]


async def frames_within(socket: aiohttp.ClientWebSocketResponse, seconds: float) -> list[Any]:
    """The frames a socket gets in the next `seconds`."""
    frames = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                frames.append(json.loads((await socket.receive()).data))
    except TimeoutError:
        return frames


def open_tab(http: aiohttp.ClientSession, server: LiveServer, conversation: Any) -> Any:
    return http.ws_connect(socket_url(server, conversation), origin=server.url)


async def test_three_processes_a_tab_on_each_sees_the_reply_whole(
    three, llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=60, token_delay=0.01)
    async with (
        aiohttp.ClientSession(headers={"Cookie": await login_cookie(user)}) as http,
        open_tab(http, three[0], conversation) as one,
        open_tab(http, three[1], conversation) as two,
        open_tab(http, three[2], conversation) as third,
    ):
        tabs = [Tab(one), Tab(two), Tab(third)]
        for tab in tabs:
            await tab.until("state")
        await one.send_json(send_frame("Hello, three"))
        dones = await asyncio.gather(*(tab.until("done") for tab in tabs))

    stored = await Message.objects.aget(role="assistant")
    assert (stored.status, stored.content) == ("complete", expected_text(60))
    for tab, done in zip(tabs, dones, strict=True):
        assert done == dones[0] and done["status"] == "complete"
        assert tab.text == stored.content
        assert [f["type"] for f in tab.frames].count("state") == 1  # no resync needed


async def test_three_processes_a_tab_opens_mid_reply_on_the_third(
    three, llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=150, token_delay=0.01)
    async with (
        aiohttp.ClientSession(headers={"Cookie": await login_cookie(user)}) as http,
        open_tab(http, three[0], conversation) as one,
        open_tab(http, three[1], conversation) as two,
    ):
        tab_one, tab_two = Tab(one), Tab(two)
        await tab_one.until("state")
        await tab_two.until("state")
        await one.send_json(send_frame("Hello"))
        for _ in range(3):
            await tab_two.until("delta")

        async with open_tab(http, three[2], conversation) as third:
            late = Tab(third)
            state = await late.until("state")
            done = await late.until("done")
        await tab_one.until("done")
        await tab_two.until("done")

    assert state["streaming"] is not None and state["streaming"]["seq"] >= 3
    stored = await Message.objects.aget(role="assistant")
    assert stored.content == expected_text(150) == done["content"]
    assert late.text == tab_one.text == tab_two.text == stored.content


async def test_three_processes_one_survivor_ends_a_killed_process_reply(
    three, llm_server, user, conversation, login_cookie
):
    """A fourth process runs the reply and is killed; the three survivors race to end it
    (two with a tab): it is marked `interrupted` once, by one, and each tab gets one
    `done`."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=2000, token_delay=0.02)
    survivors = three[1:]
    with serve(llm_server, REDIS_URL=REDIS_URL) as runner:
        async with (
            aiohttp.ClientSession(headers={"Cookie": await login_cookie(user)}) as http,
            open_tab(http, runner, conversation) as sender,
            open_tab(http, survivors[0], conversation) as two,
            open_tab(http, survivors[1], conversation) as third,
        ):
            tabs = [Tab(two), Tab(third)]
            await Tab(sender).until("state")
            for tab in tabs:
                await tab.until("state")
            await sender.send_json(send_frame("Long"))
            await tabs[0].until("delta")
            await asyncio.sleep(1.5)  # a checkpoint or more is saved

            runner.process.kill()
            async with asyncio.timeout(NOTICED_WITHIN):
                dones = await asyncio.gather(*(tab.until("done") for tab in tabs))
            # Nothing after it: a second survivor ending it too would send another.
            later = await asyncio.gather(*(frames_within(socket, 3.0) for socket in (two, third)))
    logs = [process.log.read_text() for process in three]

    stored = await Message.objects.aget(role="assistant")
    assert stored.status == "interrupted" and stored.content
    assert later == [[], []]
    for done in dones:
        assert done["status"] == "interrupted" and done["content"] == stored.content
    ended_by = [line for log in logs for line in log.splitlines() if str(stored.pk) in line]
    assert len(ended_by) == 1 and "stopped beating" in ended_by[0], ended_by
