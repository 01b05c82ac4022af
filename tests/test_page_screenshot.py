"""The README's screenshot, taken by the suite: the chat page with its sidebar and a reply
rendered as Markdown with a highlighted code block, in a real Chromium.

Every run saves it to /tmp/chat-readme.png. To regenerate the README's copy:

    CHAT_README_SCREENSHOT=docs/chat.png .venv/bin/pytest tests/test_page_screenshot.py
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.async_api import Page, expect

from chat.models import Conversation
from tests import test_browser
from tests.llm_server import Behaviour, FakeLLM
from tests.test_browser import last_reply, open_new_chat, send

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

SCREENSHOT = "/tmp/chat-readme.png"  # noqa: S108 - looked at by a person, not read back
MAX_BYTES = 300_000  # the README's copy is committed: keep it small
OLDER_CHATS = ["asyncio.gather", "Rows per day", "Lisbon in 3 days"]
QUESTION = "Top words in a file, in Python?"
CODE = """\
from collections import Counter
from pathlib import Path


def common_words(path: str, n: int = 3) -> list[tuple[str, int]]:
    text = Path(path).read_text(encoding="utf-8")
    return Counter(text.lower().split()).most_common(n)


print(common_words("notes.txt"))
"""
REPLY = [
    "Read the file, split it into words and let ",
    "`collections.Counter` do the counting:\n\n",
    "```python\n",
    *CODE.splitlines(keepends=True),
    "```\n\n",
    "- `split()` with no argument splits on **any** run of whitespace.\n",
    "- `most_common(n)` gives the `n` most frequent words, most frequent first.\n",
]


def screenshot_path() -> Path:
    """Where to save it: /tmp, or where CHAT_README_SCREENSHOT says (relative to the
    project)."""
    wanted = os.environ.get("CHAT_README_SCREENSHOT")
    return settings.BASE_DIR / wanted if wanted else Path(SCREENSHOT)


async def test_readme_screenshot(
    page: Page, live_server_url: str, user: User, llm_server: FakeLLM
) -> None:
    now = timezone.now()
    for hours, title in enumerate(OLDER_CHATS, start=1):
        chat = await Conversation.objects.acreate(owner=user, title=title, model="gpt-4o-mini")
        earlier = now - timedelta(hours=hours)
        await Conversation.objects.filter(pk=chat.pk).aupdate(updated_at=earlier)
    await page.set_viewport_size({"width": 1200, "height": 760})
    llm_server.behaviour = Behaviour(words=REPLY)
    await open_new_chat(page, live_server_url, user)

    await send(page, QUESTION)

    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "complete")
    await expect(reply.locator(".code-block .hljs-keyword").first).to_be_visible()
    await expect(reply.locator("li strong")).to_have_text("any")
    await expect(page.locator("#sidebar")).to_be_visible()
    await expect(page.locator("#conversation-list .sidebar__link")).to_have_count(4)
    await page.mouse.move(0, 0)  # no hover effect in the picture
    path = screenshot_path()
    await page.screenshot(path=path)
    assert path.stat().st_size < MAX_BYTES
