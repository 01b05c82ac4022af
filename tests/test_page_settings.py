"""The chat page's model picker and system prompt in a real Chromium, against a server
that offers two models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from playwright.async_api import Page, expect

from chat.models import Conversation
from tests import test_browser
from tests.live_daphne import serve
from tests.llm_server import Behaviour, FakeLLM
from tests.test_browser import last_reply, log_in, open_new_chat, open_stored_chat, send

# test_browser's browser and watchful page, on a live server of this module's own.
browser = test_browser.browser
page = test_browser.page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio(loop_scope="module"),
]

MODELS = ["model-a", "model-b"]


@pytest.fixture(scope="module")
def live_server_url(django_db_setup: None, llm_server: FakeLLM) -> Iterator[str]:
    """daphne as test_browser's, offering two models."""
    with serve(llm_server, CHAT_MODELS=",".join(MODELS)) as server:
        yield server.url


async def test_switch_model_and_set_system_prompt(
    page: Page, live_server_url: str, user: User, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=3)
    await open_stored_chat(page, live_server_url, user, model="model-a")
    await page.get_by_text("Model and system prompt").click()
    model = page.get_by_label("Model", exact=True)
    await expect(model.locator("option")).to_have_text(MODELS)
    await expect(model).to_have_value("model-a")

    await model.select_option("model-b")
    await page.get_by_label("System prompt").fill("Answer like a pirate.")
    await page.get_by_role("button", name="Save").click()

    await expect(page.locator("#settings-status")).to_have_text(
        "Saved. The next reply uses these."
    )
    await expect(page.locator("#conversation-model-name")).to_have_text("model-b")
    stored = await Conversation.objects.aget()
    assert (stored.model, stored.system_prompt) == ("model-b", "Answer like a pirate.")
    await send(page, "Hello")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    request = llm_server.requests[-1]
    assert request["model"] == "model-b"
    assert request["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    # After a reload the page shows what is stored.
    await page.reload()
    await expect(model).to_have_value("model-b")
    await expect(page.get_by_label("System prompt")).to_have_value("Answer like a pirate.")


async def test_a_model_no_longer_offered_says_so(
    page: Page, live_server_url: str, user: User
) -> None:
    retired = await Conversation.objects.acreate(owner=user, model="retired-model")
    await log_in(page, live_server_url, user)

    await page.goto(f"{live_server_url}/c/{retired.id}/")

    await page.get_by_text("Model and system prompt").click()
    model = page.get_by_label("Model", exact=True)
    await expect(model.locator("option")).to_have_text(
        ["retired-model (no longer offered)", *MODELS]
    )
    await expect(page.locator("#settings-status")).to_contain_text("no longer offered")


async def test_draft_starts_with_the_picked_model_and_prompt(
    page: Page, live_server_url: str, user: User, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=3)
    await open_new_chat(page, live_server_url, user)
    await page.get_by_text("Model and system prompt").click()
    model = page.get_by_label("Model", exact=True)
    await expect(model.locator("option")).to_have_text(MODELS)
    await model.select_option("model-b")
    await page.get_by_label("System prompt").fill("Answer like a pirate.")
    # Nothing to save to yet: the picks wait for the first message.
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("#settings-status")).to_contain_text("first message")
    assert not await Conversation.objects.aexists()

    await send(page, "Hello")

    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    stored = await Conversation.objects.aget()
    assert (stored.model, stored.system_prompt) == ("model-b", "Answer like a pirate.")
    request = llm_server.requests[-1]
    assert request["model"] == "model-b"
    assert request["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    await expect(page.locator("#conversation-model-name")).to_have_text("model-b")
