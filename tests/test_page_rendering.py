"""Replies on the chat page rendered as Markdown, in a real Chromium: while they stream,
with highlighted code and copy buttons, and never running or loading what a reply holds.

The browser, the live server and the steps are test_browser.py's; its `page` fixture fails
a test on any dialog, script error, CSP violation or request that leaves the app.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractBaseUser
from playwright.async_api import Page, expect

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

CODE = 'def greet(name):\n    return f"Hello, {name}"\n'
# One token per word (or line); at 0.15 s apart most arrive in frames of their own.
MARKDOWN_REPLY = [
    "# A title\n\n",
    "Some **bold** ",
    "and `code`.\n\n",
    "- one\n",
    "- two\n\n",
    "```python\n",
    *CODE.splitlines(keepends=True),
    "```\n\n",
    "The end.",
]
HOSTILE_REPLY = [
    "[x](javascript:alert(1)) ",
    "[y](JaVaScRiPt:alert(2)) ",
    "[d](data:text/html,<script>alert(3)</script>)\n\n",
    "![](http://example.com/a.png) ",
    "![tracker](https://example.com/b.png) ",
    "![inline](data:image/png;base64,iVBORw0KGgo=)\n\n",
    "<img src=x onerror=alert(4)> ",
    "<script>alert(5)</script> ",
    '<svg onload="alert(6)"></svg> ',
    '<a href="javascript:alert(7)">a</a> ',
    "&lt;img src=x onerror=alert(8)&gt; ",
    # Split across two frames: the tail is rendered with half a tag, then whole.
    "<img src=x on",
    "error=alert(9)>\n\n",
    "[ref]: javascript:alert(10)\n\n[ref] ",
    "<https://example.com/ok>",
]


async def test_reply_renders_markdown_while_it_streams(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(words=MARKDOWN_REPLY, token_delay=0.15)
    await open_new_chat(page, live_server_url, user)

    await send(page, "Show me some Markdown")

    reply = last_reply(page)
    content = reply.locator(".message__content")
    await expect(content.locator("h1")).to_have_text("A title")
    await expect(content.locator("strong")).to_have_text("bold")
    await expect(content.locator(".code-block")).to_be_visible()
    # Rendered while streaming, not only at the end.
    await expect(reply).to_have_attribute("data-status", "streaming")
    # The first block, finished by now, is never rendered again: the same element stays.
    await content.locator("h1").evaluate("h1 => { h1.dataset.seen = 'yes'; }")
    await expect(reply).to_have_attribute("data-status", "complete")
    await expect(content.locator("h1")).to_have_attribute("data-seen", "yes")
    await expect(content.locator("li")).to_have_text(["one", "two"])
    await expect(content.locator("p code")).to_have_text("code")
    block = content.locator(".code-block")
    await expect(block.locator(".code-block__language")).to_have_text("python")
    await expect(block.locator("code .hljs-keyword").first).to_have_text("def")
    assert await block.locator("code").text_content() == CODE
    await expect(content.locator("p").last).to_have_text("The end.")


async def test_copy_buttons_copy_code_and_message(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    await page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=live_server_url
    )
    llm_server.behaviour = Behaviour(words=MARKDOWN_REPLY)
    await open_new_chat(page, live_server_url, user)
    await send(page, "Show me some Markdown")
    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "complete")

    copy_code = reply.locator(".code-block__copy")
    await copy_code.click()

    await expect(copy_code).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == CODE
    await reply.get_by_role("button", name="Copy message").click()
    assert await page.evaluate("navigator.clipboard.readText()") == "".join(MARKDOWN_REPLY)


async def test_hostile_reply_runs_nothing_and_loads_nothing(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(words=HOSTILE_REPLY, token_delay=0.15)
    await open_new_chat(page, live_server_url, user)

    await send(page, "Try your worst")

    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "complete")
    content = reply.locator(".message__content")
    await expect(content).to_contain_text("<img src=x onerror=alert(9)>")  # as text
    await expect(content.locator("img, script, svg, iframe, object, embed")).to_have_count(0)
    hrefs = await content.locator("a[href]").evaluate_all("links => links.map(a => a.href)")
    assert hrefs == [
        "http://example.com/a.png",
        "https://example.com/b.png",
        "https://example.com/ok",
    ]
    # markdown-it leaves links to scripts as text; DOMPurify strips the data: URL that
    # markdown-it lets through for images (which are links here, never fetched).
    await expect(content).to_contain_text("[x](javascript:alert(1))")
    await expect(content.locator("a.image-link:not([href])")).to_have_text("inline")
    await content.get_by_text("inline", exact=True).click()
    assert not await content.locator("[onerror], [onload], [onclick], [style]").count()
    # The `page` fixture fails the test if any of it ran (a dialog) or loaded (a request).


async def test_without_the_libraries_replies_show_as_plain_text(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    # As on a machine without Node, where `make install` bundled nothing.
    await page.route("**/chat/vendor/libraries.js", lambda route: route.fulfill(status=404))
    llm_server.behaviour = Behaviour(words=["# Not a title ", "<b>x</b>"])
    await open_new_chat(page, live_server_url, user)

    await send(page, "Hello")

    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "complete")
    await expect(reply.locator(".message__content")).to_have_text("# Not a title <b>x</b>")
    await expect(reply.locator("h1, b")).to_have_count(0)
    test_browser.forgive(page, "404 (Not Found)")  # the bundle, missing on purpose
