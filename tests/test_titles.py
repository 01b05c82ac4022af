"""Titles the model writes after a conversation's first reply: in the background, told to
every tab, never over a title the user chose, and nothing at all when the model fails."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import pytest
from django.conf import settings as django_settings

from chat import chats, titles
from chat.models import Conversation
from tests.api_client import url
from tests.conftest import logged_in_client
from tests.live_daphne import serve
from tests.live_tabs import REDIS_URL, next_frame, send_frame, tab_url, until
from tests.llm_server import Behaviour, FakeLLM, expected_text
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "Where should I go in France for a week?"


@pytest.fixture(autouse=True)
def titles_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Titles on, off for the rest of the suite (tests/settings.py). Not through the
    `settings` fixture, which would hide the settings module from the live servers."""
    monkeypatch.setattr(django_settings, "CHAT_GENERATE_TITLES", True)


def answer_titles(llm: FakeLLM, *words: str, **behaviour: Any) -> None:
    """Answer the title requests (told apart by their instruction) with `words`."""
    llm.by_instruction[titles.INSTRUCTION] = Behaviour(words=words, **behaviour)


def title_requests(llm: FakeLLM) -> list[dict[str, Any]]:
    return [r for r in llm.requests if r["messages"][0]["content"] == titles.INSTRUCTION]


async def titles_settled() -> None:
    """Wait until no title request of this loop's service is under way."""
    async with asyncio.timeout(10):
        await wait_until(lambda: not chats.service().titles._tasks)


async def stored_title(conversation: Conversation) -> str:
    await conversation.arefresh_from_db(fields=["title"])
    return conversation.title


# --- Written and told ---------------------------------------------------------------------


async def test_title_after_first_reply_reaches_every_tab(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=8)
    answer_titles(llm, '"**Trip ', "to ", 'Provence**".\n', "Some more text")
    tab = await open_socket(user, conversation.id)
    other_tab = await open_socket(user, conversation.id)

    await tab.send(type="send", content=QUESTION)
    frames = await tab.receive_until("done")
    retitled = await tab.receive()

    assert frames[-1]["status"] == "complete"
    assert not [f for f in frames if f["type"] == "conversation"]  # after the reply
    assert retitled["type"] == "conversation"
    assert retitled["conversation"]["title"] == "Trip to Provence"
    assert retitled["conversation"]["id"] == str(conversation.id)
    seen = await other_tab.receive_until("conversation")
    assert seen[-1] == retitled and seen[-2]["type"] == "done"
    assert await stored_title(conversation) == "Trip to Provence"
    [request] = title_requests(llm)
    assert not request.get("stream")
    assert request["model"] == conversation.model
    assert request["max_tokens"] == titles.MAX_TOKENS
    excerpt = request["messages"][1]["content"]
    assert QUESTION in excerpt and expected_text(8) in excerpt
    assert await tab.nothing_more() and await other_tab.nothing_more()


async def test_title_for_a_reply_sent_through_the_api(llm, user, conversation):
    answer_titles(llm, "Trip to Provence")
    client = await logged_in_client(user)

    body = json.dumps({"content": QUESTION})
    response = await client.post(url(conversation, "messages"), body, "application/json")

    assert response.status_code == 201
    assert response.json()["assistant_message"]["status"] == "complete"

    async def titled() -> bool:
        return await stored_title(conversation) == "Trip to Provence"

    async with asyncio.timeout(5):
        await wait_until(titled)


async def test_title_never_delays_the_reply(llm, user, conversation, open_socket, settings):
    settings.CHAT_READ_TIMEOUT = 10.0
    llm.behaviour = Behaviour(tokens=5)
    answer_titles(llm, "Trip to Provence", first_token_delay=3.0)
    tab = await open_socket(user, conversation.id)

    asked_at = time.monotonic()
    await tab.send(type="send", content=QUESTION)
    first = await tab.receive_until("done")
    # The model is still writing the title; the next question is answered meanwhile.
    await tab.send(type="send", content="And in spring?")
    second = await tab.receive_until("done")
    answered_in = time.monotonic() - asked_at
    retitled = await tab.receive()

    assert first[-1]["status"] == second[-1]["status"] == "complete"
    assert answered_in < 3.0
    assert not [f for f in first + second if f["type"] == "conversation"]
    assert retitled["type"] == "conversation"
    assert retitled["conversation"]["title"] == "Trip to Provence"


async def test_title_reaches_the_tabs_on_another_process(
    llm_server, user, conversation, login_cookie
):
    llm_server.reset()
    answer_titles(llm_server, "Trip to Provence")
    cookie = await login_cookie(user)
    live = {"REDIS_URL": REDIS_URL, "CHAT_GENERATE_TITLES": "1"}
    with serve(llm_server, **live) as one, serve(llm_server, **live) as two:
        async with (
            aiohttp.ClientSession(headers={"Cookie": cookie}) as http,
            http.ws_connect(tab_url(one.url, conversation.id), origin=one.url) as tab_one,
            http.ws_connect(tab_url(two.url, conversation.id), origin=two.url) as tab_two,
        ):
            assert (await next_frame(tab_one))["type"] == "state"
            assert (await next_frame(tab_two))["type"] == "state"
            await tab_one.send_json(send_frame(QUESTION))

            assert (await until(tab_two, "done"))["status"] == "complete"
            retitled = await until(tab_two, "conversation")

    assert retitled["conversation"]["title"] == "Trip to Provence"
    assert await stored_title(conversation) == "Trip to Provence"


# --- Never over the user's title ----------------------------------------------------------


async def test_title_never_replaces_a_rename(llm, user, conversation, open_socket, settings):
    settings.CHAT_READ_TIMEOUT = 10.0
    answer_titles(llm, "Trip to Provence", first_token_delay=1.0)
    tab = await open_socket(user, conversation.id)
    await tab.send(type="send", content=QUESTION)
    await tab.receive_until("done")
    async with asyncio.timeout(5):
        await wait_until(lambda: bool(title_requests(llm)))  # asked, not yet answered

    await chats.service().update(user.pk, conversation.id, title="My holidays")
    await titles_settled()

    renamed = await tab.receive()
    assert renamed["type"] == "conversation"
    assert renamed["conversation"]["title"] == "My holidays"
    assert await tab.nothing_more()  # no frame for the model's title
    assert await stored_title(conversation) == "My holidays"


async def test_no_title_for_a_conversation_titled_before(llm, user, open_socket):
    conversation = await Conversation.objects.acreate(
        owner=user, model="test-model", title="Named at creation"
    )
    tab = await open_socket(user, conversation.id)
    await tab.send(type="send", content=QUESTION)
    await tab.receive_until("done")
    await asyncio.sleep(0.2)

    assert title_requests(llm) == []
    assert await tab.nothing_more()
    assert await stored_title(conversation) == "Named at creation"


async def test_title_only_after_the_first_reply(llm, user, conversation, open_socket):
    answer_titles(llm, "Trip to Provence")
    tab = await open_socket(user, conversation.id)
    await tab.send(type="send", content=QUESTION)
    await tab.receive_until("conversation")

    await tab.send(type="send", content="And in spring?")
    await tab.receive_until("done")
    await tab.send(type="regenerate")
    await tab.receive_until("done")
    await asyncio.sleep(0.2)

    assert len(title_requests(llm)) == 1
    assert await tab.nothing_more()


# --- When it cannot be written ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "malformed", "cut", "stall"])
async def test_failing_model_leaves_the_first_line_as_title(
    llm, user, conversation, open_socket, settings, caplog, fault
):
    settings.CHAT_MAX_RETRIES = 0
    answer_titles(llm, "Never seen", fault=fault, stall_seconds=3.0)
    tab = await open_socket(user, conversation.id)

    with caplog.at_level(logging.INFO, logger="chat.titles"):
        await tab.send(type="send", content=QUESTION)
        frames = await tab.receive_until("done")
        async with asyncio.timeout(5):
            await wait_until(lambda: bool(title_requests(llm)))
        await titles_settled()

    assert frames[-1]["status"] == "complete"
    assert await tab.nothing_more()  # no title, and no error frame either
    assert await stored_title(conversation) == QUESTION
    logged = [r for r in caplog.records if r.name == "chat.titles"]
    assert logged and all(r.levelno <= logging.WARNING for r in logged)


async def test_no_title_after_a_reply_that_failed(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(fault="500")
    tab = await open_socket(user, conversation.id)
    await tab.send(type="send", content=QUESTION)
    frames = await tab.receive_until("done")
    await asyncio.sleep(0.2)

    assert frames[-1]["status"] == "failed"
    assert title_requests(llm) == []


async def test_setting_off_asks_for_no_title(llm, user, conversation, open_socket, settings):
    settings.CHAT_GENERATE_TITLES = False
    tab = await open_socket(user, conversation.id)
    await tab.send(type="send", content=QUESTION)
    await tab.receive_until("done")
    await asyncio.sleep(0.2)

    assert len(llm.requests) == 1  # the reply's only
    assert await tab.nothing_more()
    assert await stored_title(conversation) == QUESTION


async def test_shutdown_cancels_a_title_under_way(llm, user, conversation, open_socket, settings):
    settings.CHAT_READ_TIMEOUT = 30.0
    answer_titles(llm, "Never stored", first_token_delay=20.0)
    tab = await open_socket(user, conversation.id)
    await tab.send(type="send", content=QUESTION)
    await tab.receive_until("done")
    async with asyncio.timeout(5):
        await wait_until(lambda: bool(title_requests(llm)))

    async with asyncio.timeout(5):
        await chats.service().interrupt_all()

    assert not chats.service().titles._tasks
    assert await stored_title(conversation) == QUESTION


# --- Cleaning the model's answer ----------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ("Trip to Provence", "Trip to Provence"),
        ('"Trip to Provence."', "Trip to Provence"),
        ("“Trip to Provence”", "Trip to Provence"),
        ("## Trip to **Provence**", "Trip to Provence"),
        ("**Title:** Trip to Provence", "Trip to Provence"),
        ("Title: 'Trip to Provence'", "Trip to Provence"),
        ("\n\n  Trip   to Provence  \nSecond line", "Trip to Provence"),
        ("`Trip to Provence`...", "Trip to Provence"),
        ("", ""),
        (' "" \n', ""),
        ("Trip\x00 to Provence", "Trip\ufffd to Provence"),  # as every stored text
    ],
)
def test_cleaned_title(answer: str, title: str) -> None:
    assert titles.cleaned(answer) == title


def test_cleaned_title_is_capped_at_a_word() -> None:
    cleaned = titles.cleaned("word " * 100)
    assert len(cleaned) <= titles.TITLE_MAX_LENGTH
    assert cleaned.endswith("word\u2026")
