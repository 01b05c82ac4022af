"""A conversation whose recent messages add up past what daphne sends as one websocket
message (1 MiB): its `state` leaves out the oldest of them and arrives (`chat.frame_limits`).
Sent whole, daphne refused it and the tab waited for it for good."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from chat.frame_limits import FRAME_BYTES, encoded_state
from chat.models import Message
from tests.live_daphne import serve
from tests.live_tabs import next_frame, send_frame, until
from tests.llm_server import expected_text

pytestmark = pytest.mark.django_db(transaction=True)

# 16,000 characters of Chinese, the longest message a user may send, are 96 KB of JSON.
LONG = "长" * 16_000
MESSAGES = 14  # 1.3 MB in all


def test_a_state_over_the_limit_keeps_its_newest_messages():
    messages = [{"id": str(n), "content": LONG} for n in range(MESSAGES)]
    frame: dict[str, Any] = {
        "type": "state",
        "conversation": {},
        "messages": messages,
        "streaming": None,
    }
    assert len(json.dumps(frame)) > FRAME_BYTES

    kept, text = encoded_state(frame)

    assert len(text) <= FRAME_BYTES
    assert json.loads(text) == kept
    ids = [m["id"] for m in kept["messages"]]
    assert ids == [str(n) for n in range(MESSAGES - len(ids), MESSAGES)]  # the newest
    assert len(ids) >= MESSAGES - 4  # no more left out than needed


def test_a_state_within_the_limit_is_whole():
    frame: dict[str, Any] = {
        "type": "state",
        "conversation": {},
        "messages": [{"content": "hi"}],
        "streaming": None,
    }
    assert encoded_state(frame) == (frame, json.dumps(frame))


async def test_a_tab_of_a_long_conversation_gets_its_state_on_daphne(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    await Message.objects.abulk_create(
        Message(conversation=conversation, role=role, content=LONG, status="complete")
        for role in ["user", "assistant"] * (MESSAGES // 2)
    )
    cookie = await login_cookie(user)
    with serve(llm_server) as server:
        url = f"{server.url.replace('http', 'ws')}/ws/conversations/{conversation.id}/"
        async with (
            aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
            http.ws_connect(url, origin=server.url, max_msg_size=0) as tab,
        ):
            state = await next_frame(tab)
            assert state["type"] == "state"
            assert all(m["content"] == LONG for m in state["messages"])
            assert len(state["messages"]) < MESSAGES
            # And the conversation goes on.
            await tab.send_json(send_frame("Short, please."))
            done = await until(tab, "done")
    assert done["status"] == "complete"
    assert done["content"] == expected_text(20)
