"""The chat page's sidebar in a real Chromium: the user's conversations newest first,
more as it scrolls, search, rename in place, delete after a confirmation, and folded
behind a button on a phone. Through the JSON API, with the page's session and CSRF token.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import AbstractBaseUser, User
from django.utils import timezone
from playwright.async_api import Locator, Page, expect

from chat.models import Conversation, Message
from tests import test_browser
from tests.test_browser import log_in

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

SCREENSHOT_PHONE = "/tmp/chat-phone.png"  # noqa: S108 - looked at by a person, not read back


async def make_conversations(user: User, titles: list[str]) -> list[Conversation]:
    """Conversations with these titles, the first the newest."""
    now = timezone.now()
    return [
        await Conversation.objects.acreate(
            owner=user, title=title, model="test-model", updated_at=now - timedelta(minutes=i)
        )
        for i, title in enumerate(titles)
    ]


async def open_conversation(
    page: Page, live_server_url: str, user: AbstractBaseUser, conversation: Conversation
) -> None:
    await log_in(page, live_server_url, user)
    await page.goto(f"{live_server_url}/c/{conversation.id}/")
    await expect(page.locator("#chat")).to_have_attribute("data-connection", "live")


def sidebar_links(page: Page) -> Locator:
    return page.locator("#conversation-list .sidebar__link")


def item(page: Page, title: str) -> Locator:
    return page.locator("#conversation-list .sidebar__item").filter(
        has=page.get_by_role("link", name=title, exact=True)
    )


async def test_sidebar_lists_newest_first_and_loads_more_as_it_scrolls(
    page: Page, live_server_url: str, user: User
) -> None:
    titles = [f"Chat {i:02}" for i in range(45)]
    conversations = await make_conversations(user, titles)
    await open_conversation(page, live_server_url, user, conversations[3])

    await expect(sidebar_links(page)).to_have_count(30)  # one page
    assert await sidebar_links(page).all_text_contents() == titles[:30]
    current = page.locator("#conversation-list [aria-current=page]")
    await expect(current).to_have_text("Chat 03")

    await page.locator("#conversation-more").scroll_into_view_if_needed()

    await expect(sidebar_links(page)).to_have_count(45)
    assert await sidebar_links(page).all_text_contents() == titles
    await expect(page.locator("#conversation-more")).to_be_hidden()
    await sidebar_links(page).nth(40).click()
    await expect(page).to_have_url(f"{live_server_url}/c/{conversations[40].id}/")


async def test_sidebar_search_finds_titles_and_message_text(
    page: Page, live_server_url: str, user: User
) -> None:
    apples, pears, plums = await make_conversations(user, ["Apples", "Pears", "Plums"])
    await Message.objects.acreate(
        conversation=plums, role="user", content="Are pears related to plums?"
    )
    await open_conversation(page, live_server_url, user, apples)
    await expect(sidebar_links(page)).to_have_count(3)

    await page.fill("#conversation-search", "pear")

    await expect(sidebar_links(page)).to_have_text(["Pears", "Plums"])
    await page.fill("#conversation-search", "kiwi")
    await expect(sidebar_links(page)).to_have_count(0)
    await expect(page.locator("#sidebar-status")).to_have_text("No chat matches.")
    await page.fill("#conversation-search", "")
    await expect(sidebar_links(page)).to_have_count(3)


async def test_sidebar_renames_in_place(page: Page, live_server_url: str, user: User) -> None:
    current, other = await make_conversations(user, ["Old name", "Other"])
    await open_conversation(page, live_server_url, user, current)

    await item(page, "Old name").get_by_role("button", name="Rename").click()
    title = page.get_by_role("textbox", name="New title")
    await expect(title).to_be_focused()
    await title.fill("New name")
    await title.press("Enter")

    await expect(item(page, "New name")).to_have_count(1)
    await expect(page.locator("#conversation-title")).to_have_text("New name")
    await current.arefresh_from_db()
    assert current.title == "New name"
    # Esc leaves the title as it was.
    await item(page, "Other").get_by_role("button", name="Rename").click()
    await title.fill("Never saved")
    await title.press("Escape")
    await expect(item(page, "Other")).to_have_count(1)
    await other.arefresh_from_db()
    assert other.title == "Other"
    # Renamed elsewhere (another tab, a script): the socket's `conversation` frame says so.
    token = await page.locator("#chat").get_attribute("data-csrf-token")
    response = await page.request.patch(
        f"{live_server_url}/api/conversations/{current.id}/",
        data={"title": "From elsewhere"},
        headers={"X-CSRFToken": token or ""},
    )
    assert response.ok, await response.text()
    await expect(page.locator("#conversation-title")).to_have_text("From elsewhere")
    await expect(item(page, "From elsewhere")).to_have_count(1)


async def confirm_delete(row: Locator) -> None:
    await row.get_by_role("button", name="Delete").click()
    confirm = row.get_by_role("group", name="Confirm delete")
    await confirm.get_by_role("button", name="Delete", exact=True).click()


async def test_sidebar_deletes_after_confirmation(
    page: Page, live_server_url: str, user: User
) -> None:
    current, doomed = await make_conversations(user, ["Keep", "Old notes"])
    await open_conversation(page, live_server_url, user, current)
    row = item(page, "Old notes")

    await row.get_by_role("button", name="Delete").click()
    await row.get_by_role("button", name="Cancel").click()  # changed my mind
    await expect(row.get_by_role("button", name="Rename")).to_be_visible()
    assert await Conversation.objects.filter(id=doomed.id).aexists()
    await confirm_delete(row)

    await expect(row).to_have_count(0)
    assert not await Conversation.objects.filter(id=doomed.id).aexists()
    # Deleting the open conversation goes back to the list.
    await confirm_delete(item(page, "Keep"))
    await expect(page).to_have_url(f"{live_server_url}/")
    assert not await Conversation.objects.aexists()


async def test_open_conversation_deleted_elsewhere_says_so(
    page: Page, live_server_url: str, user: User
) -> None:
    (current,) = await make_conversations(user, ["Short-lived"])
    await open_conversation(page, live_server_url, user, current)
    token = await page.locator("#chat").get_attribute("data-csrf-token")

    response = await page.request.delete(
        f"{live_server_url}/api/conversations/{current.id}/", headers={"X-CSRFToken": token or ""}
    )

    assert response.status == 204
    await expect(page.locator(".notice")).to_have_text("This conversation was deleted.")
    await expect(page.locator("#composer-input")).to_be_disabled()


async def test_sidebar_folds_behind_a_button_on_a_phone(
    page: Page, live_server_url: str, user: User
) -> None:
    (current,) = await make_conversations(user, ["On the go"])
    await page.set_viewport_size({"width": 390, "height": 800})
    await open_conversation(page, live_server_url, user, current)
    sidebar = page.get_by_role("complementary", name="Your chats")
    toggle = page.get_by_role("button", name="Chats")
    await expect(sidebar).to_be_hidden()

    await toggle.click()

    await expect(sidebar).to_be_visible()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await expect(page.locator("#conversation-search")).to_be_focused()
    await page.screenshot(path=SCREENSHOT_PHONE)
    await page.keyboard.press("Escape")
    await expect(sidebar).to_be_hidden()
    await expect(toggle).to_be_focused()
    # Wide again, the sidebar is simply there.
    await page.set_viewport_size({"width": 1000, "height": 720})
    await expect(sidebar).to_be_visible()
    await expect(toggle).to_be_hidden()
