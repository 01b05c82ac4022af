"""New chat in a real Chromium: a draft page that stores nothing until its first send,
which creates the conversation and turns the page into its page without a reload."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.async_api import Page, expect

from chat.models import Conversation
from tests import test_browser
from tests.live_daphne import serve
from tests.llm_server import Behaviour, FakeLLM
from tests.test_browser import forgive, last_reply, open_new_chat, reply_text, send, shown

# test_browser's browser and watchful page, on a live server of this module's own.
browser = test_browser.browser
page = test_browser.page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest.fixture(scope="module")
def live_server_url(django_db_setup: None, llm_server: FakeLLM) -> Iterator[str]:
    """daphne as test_browser's, letting a user start one conversation a minute."""
    with serve(llm_server, CHAT_CONVERSATIONS_PER_MINUTE="1") as server:
        yield server.url


async def make_older(user: User, title: str) -> Conversation:
    """A conversation made long enough ago not to count against the per-minute limit."""
    conversation = await Conversation.objects.acreate(owner=user, title=title, model="test-model")
    earlier = timezone.now() - timedelta(minutes=5)
    await Conversation.objects.filter(pk=conversation.pk).aupdate(
        created_at=earlier, updated_at=earlier
    )
    return conversation


async def test_new_chat_stores_nothing_until_the_first_send(
    page: Page, live_server_url: str, user: User, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=40, token_delay=0.05)
    older = await make_older(user, "An older chat")
    await open_new_chat(page, live_server_url, user)

    # A draft: nothing stored, the sidebar lists the others with none of them current.
    assert await Conversation.objects.acount() == 1
    await expect(page.locator("#conversation-title")).to_have_text("New chat")
    links = page.locator("#conversation-list .sidebar__link")
    await expect(links).to_have_text(["An older chat"])
    await expect(page.locator('#conversation-list [aria-current="page"]')).to_have_count(0)
    await expect(page.locator("#conversation-export")).to_be_hidden()
    # Marks this document: a reload or a navigation would lose the mark.
    await page.evaluate("window.sameDocument = true")

    await send(page, "Hello draft")

    await expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    reply = last_reply(page)
    await expect(reply.locator(".message__content")).to_contain_text("w3 ")
    await expect(reply).to_have_attribute("data-status", "streaming")
    await expect(reply).to_have_attribute("data-status", "complete")
    assert await reply_text(page) == shown(40)
    await expect(page.locator(".message--user .message__content")).to_have_text("Hello draft")
    await expect(page.locator("#composer-input")).to_have_value("")
    assert await page.evaluate("window.sameDocument") is True
    # Exactly one conversation made, the one the address names, at the sidebar's top.
    created = await Conversation.objects.exclude(pk=older.pk).aget()
    assert created.owner_id == user.pk
    assert page.url == f"{live_server_url}/c/{created.id}/"
    await expect(links).to_have_text(["Hello draft", "An older chat"])
    await expect(links.first).to_have_attribute("aria-current", "page")
    await expect(page.locator("#conversation-title")).to_have_text("Hello draft")
    export = page.locator("#conversation-export").get_by_role("link", name="JSON")
    await expect(export).to_have_attribute(
        "href", f"/api/conversations/{created.id}/export/?format=json"
    )
    assert await Conversation.objects.acount() == 2
    # The address is the conversation's: a reload shows it, stored.
    await page.reload()
    await expect(page.locator("#chat")).to_have_attribute("data-connection", "live")
    await expect(page.locator(".message")).to_have_count(2)


async def test_new_chat_left_unused_leaves_nothing(
    page: Page, live_server_url: str, user: User
) -> None:
    await open_new_chat(page, live_server_url, user)
    await page.fill("#composer-input", "Never sent")

    await page.get_by_role("link", name="Chat", exact=True).click()

    await expect(page).to_have_url(f"{live_server_url}/")
    await expect(page.get_by_text("No chats yet.")).to_be_visible()
    assert not await Conversation.objects.aexists()


async def test_draft_refused_says_why_and_keeps_the_text(
    page: Page, live_server_url: str, user: User
) -> None:
    # The limit of one new conversation a minute is used up.
    await Conversation.objects.acreate(owner=user, title="Just made", model="test-model")
    await open_new_chat(page, live_server_url, user)

    await send(page, "Refused, but kept")

    notice = page.locator(".notice")
    await expect(notice).to_contain_text("too fast")
    await expect(page.locator("#composer-input")).to_have_value("Refused, but kept")
    await expect(page).to_have_url(f"{live_server_url}/new/")
    await expect(page.locator("#chat")).to_have_attribute("data-connection", "draft")
    await expect(page.locator("#connection")).to_be_hidden()
    assert await Conversation.objects.acount() == 1
    # Chromium logs every answer of 429 to the console: this one was asked for.
    forgive(page, "status of 429")
