"""The chat page's per-conversation controls in a real Chromium: edit a sent message and
have it answered anew, Esc to stop, model and usage under each reply, "Jump to latest"
after scrolling up mid-reply, and the transcript's exports."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractBaseUser
from playwright.async_api import Page, expect

from chat.models import Message
from tests import test_browser
from tests.llm_server import Behaviour, FakeLLM
from tests.test_browser import (
    last_reply,
    open_new_chat,
    open_stored_chat,
    reply_text,
    send,
    shown,
)

# test_browser's fixtures: its browser and live server (one of each for this module too),
# and its watchful page.
browser = test_browser.browser
live_server_url = test_browser.live_server_url
page = test_browser.page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio(loop_scope="module"),
]


async def test_edit_a_sent_message_answers_it_anew(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=5)
    await open_new_chat(page, live_server_url, user)
    await send(page, "First question")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    llm_server.behaviour = Behaviour(tokens=7)

    await page.get_by_role("button", name="Edit message").click()
    edited = page.get_by_role("textbox", name="Edited message")
    await expect(edited).to_have_value("First question")
    await edited.fill("Second question")
    await edited.press("Enter")

    user_message = page.locator(".message--user .message__content")
    await expect(user_message).to_have_text("Second question")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    assert await reply_text(page) == shown(7)
    await expect(page.locator(".message")).to_have_count(2)
    stored = await Message.objects.aget(role="user")
    assert stored.content == "Second question"
    assert llm_server.requests[-1]["messages"][-1]["content"] == "Second question"


async def test_edit_cancelled_with_escape_changes_nothing(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=3)
    await open_new_chat(page, live_server_url, user)
    await send(page, "Keep me")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")

    await page.get_by_role("button", name="Edit message").click()
    await page.get_by_role("textbox", name="Edited message").fill("Changed")
    await page.keyboard.press("Escape")

    await expect(page.locator(".message--user .message__content")).to_have_text("Keep me")
    await expect(page.get_by_role("button", name="Edit message")).to_be_focused()
    assert len(llm_server.requests) == 1


async def test_escape_stops_the_reply(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=400, token_delay=0.05)
    await open_new_chat(page, live_server_url, user)
    await send(page, "Count forever")
    reply = last_reply(page)
    await expect(reply.locator(".message__content")).to_contain_text("w3 ")
    # Nothing to edit while a reply streams.
    await expect(page.get_by_role("button", name="Edit message")).to_be_hidden()

    await page.keyboard.press("Escape")

    await expect(reply).to_have_attribute("data-status", "stopped")
    await expect(reply.locator(".message__status")).to_have_text("stopped")
    await expect(page.get_by_role("button", name="Edit message")).to_be_visible()


async def test_reply_shows_its_model_and_tokens(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=6)
    await open_new_chat(page, live_server_url, user)

    await send(page, "Hello")

    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "complete")
    stored = await Message.objects.aget(role="assistant")
    await expect(reply.locator(".message__meta")).to_have_text(f"{stored.model} · 6 tokens")


async def test_jump_to_latest_after_scrolling_up_mid_reply(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    words = [f"Line {i}.\n\n" for i in range(150)]
    llm_server.behaviour = Behaviour(words=words, token_delay=0.03)
    await open_new_chat(page, live_server_url, user)
    jump = page.get_by_role("button", name="Jump to latest")
    scroll = page.locator("#transcript-scroll")
    await send(page, "A long one")
    reply = last_reply(page)
    await expect(reply.locator(".message__content")).to_contain_text("Line 40.")
    await expect(jump).to_be_hidden()  # following the stream so far

    await scroll.evaluate("el => { el.scrollTop = 0; }")

    await expect(jump).to_be_visible()
    await jump.click()
    await expect(jump).to_be_hidden()
    at_bottom = "el => el.scrollHeight - el.scrollTop - el.clientHeight < 80"
    assert await scroll.evaluate(at_bottom)
    await expect(reply).to_have_attribute("data-status", "complete")
    assert await scroll.evaluate(at_bottom)  # and followed it to the end


async def test_exports_download_the_transcript(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=4)
    await open_new_chat(page, live_server_url, user)
    await send(page, "Export me")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")

    for name in ["Markdown", "JSON"]:
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name=name, exact=True).click()
        download = await download_info.value
        path = await download.path()
        assert "Export me" in path.read_text(), name


async def test_second_tab_shows_the_same_stream(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=60, token_delay=0.05)
    await open_stored_chat(page, live_server_url, user)
    other = await page.context.new_page()  # the same session, as a second tab is
    await other.goto(page.url)
    await expect(other.locator("#chat")).to_have_attribute("data-connection", "live")

    await send(page, "Both of you, watch")

    for tab in (page, other):
        await expect(last_reply(tab)).to_have_attribute("data-status", "streaming")
    for tab in (page, other):
        await expect(last_reply(tab)).to_have_attribute("data-status", "complete")
        assert await reply_text(tab) == shown(60)
    await expect(other.locator(".message--user .message__content")).to_have_text(
        "Both of you, watch"
    )
    await other.close()
