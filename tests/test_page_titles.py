"""The title the model writes after the first reply, in a real Chromium: the page's header,
its window title and the sidebar all show it, without a reload."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from playwright.async_api import Page, expect

from chat import titles
from chat.models import Conversation
from tests import test_browser
from tests.live_daphne import serve
from tests.llm_server import Behaviour, FakeLLM
from tests.test_browser import last_reply, log_in, send

# test_browser's browser and watchful page, over a live server of this module's own: the
# suite's settings leave the titles off.
browser = test_browser.browser
page = test_browser.page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest.fixture(scope="module")
def live_server_url(django_db_setup: None, llm_server: FakeLLM) -> Iterator[str]:
    with serve(llm_server, CHAT_GENERATE_TITLES="1") as server:
        yield server.url


async def test_generated_title_shows_in_header_and_sidebar(
    page: Page, live_server_url: str, user: User, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=5)
    llm_server.by_instruction[titles.INSTRUCTION] = Behaviour(
        words=["Trip ", "to ", "Provence"], first_token_delay=0.5
    )
    conversation = await Conversation.objects.acreate(owner=user, model="test-model")
    await log_in(page, live_server_url, user)
    await page.goto(f"{live_server_url}/c/{conversation.id}/")
    await expect(page.locator("#chat")).to_have_attribute("data-connection", "live")

    await send(page, "Where should I go in France?")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")

    await expect(page.locator("#conversation-title")).to_have_text("Trip to Provence")
    await expect(page).to_have_title("Trip to Provence · Chat")
    current = page.locator("#conversation-list [aria-current=page]")
    await expect(current).to_have_text("Trip to Provence")
    await conversation.arefresh_from_db()
    assert conversation.title == "Trip to Provence"
