"""The chat page on a phone-sized screen in dark mode, in a real Chromium: nothing
overlaps, nothing is cut or wrapped that should not be, nothing scrolls sideways."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from playwright.async_api import Page, expect

from tests import test_browser
from tests.llm_server import Behaviour, FakeLLM
from tests.test_browser import last_reply, open_new_chat, send
from tests.test_page_rendering import MARKDOWN_REPLY

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

SCREENSHOT = "/tmp/chat-phone-dark.png"  # noqa: S108 - looked at by a person, not read back
LONG_LINE = "x = " + " + ".join(f"value_{i}" for i in range(40)) + "\n"
# The visible boxes of the top bar's parts, which must not overlap one another.
TOPBAR_BOXES = """() => [...document.querySelectorAll(
    ".topbar > :not(.topbar__account), .topbar__account > *")]
  .filter((el) => el.getClientRects().length > 0 && !el.contains(document.activeElement))
  .map((el) => { const r = el.getBoundingClientRect();
                 return [el.className || el.tagName, r.left, r.top, r.right, r.bottom]; })"""


Box = tuple[str, float, float, float, float]  # name, left, top, right, bottom


def overlapping(boxes: list[Box]) -> list[tuple[str, str]]:
    """The pairs of boxes that overlap (by more than a pixel each way)."""
    found = []
    for i, (name, left, top, right, bottom) in enumerate(boxes):
        for other, o_left, o_top, o_right, o_bottom in boxes[i + 1 :]:
            across = left < o_right - 1 and o_left < right - 1
            down = top < o_bottom - 1 and o_top < bottom - 1
            if across and down:
                found.append((name, other))
    return found


async def test_phone_in_dark_mode_fits(
    page: Page, live_server_url: str, user: User, llm_server: FakeLLM
) -> None:
    await page.emulate_media(color_scheme="dark")
    await page.set_viewport_size({"width": 390, "height": 740})
    words = [*MARKDOWN_REPLY[:-1], "```python\n", LONG_LINE, "```\n\n", "The end."]
    llm_server.behaviour = Behaviour(words=words)
    await open_new_chat(page, live_server_url, user)

    await send(page, "Show me some Markdown")

    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "complete")
    # Dark: the page follows the system's colour scheme.
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 24, 28)"
    # The top bar's parts sit side by side, and "Log out" stays on one line.
    assert overlapping(await page.evaluate(TOPBAR_BOXES)) == []
    log_out = page.get_by_role("button", name="Log out")
    log_out_box = await log_out.bounding_box()
    assert log_out_box is not None
    assert log_out_box["height"] < 40
    # A long line of code scrolls inside its block, not the page.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # Scrolled to the end, the last reply's buttons are above the composer, not under it.
    regenerate = await reply.get_by_role("button", name="Regenerate").bounding_box()
    composer = await page.locator(".chat__bottom").bounding_box()
    assert regenerate is not None and composer is not None
    assert regenerate["y"] + regenerate["height"] <= composer["y"]
    await page.screenshot(path=SCREENSHOT)
