"""The chat page under django-csp's Content-Security-Policy, in a real Chromium: the policy
allows no inline script, event handler attribute or eval, and streaming a rendered reply
trips none of it (test_browser's `page` fixture fails a test on any violation reported)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AbstractBaseUser
from playwright.async_api import Browser, Page, expect

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

# What a page may not do under the policy, each reported as a `securitypolicyviolation`.
FORBIDDEN = """() => new Promise((resolve) => {
  const seen = [];
  document.addEventListener("securitypolicyviolation", (e) => seen.push(e.effectiveDirective));
  const script = document.createElement("script");
  script.textContent = "window.ran = 'inline script'";
  document.body.append(script);
  const button = document.createElement("button");
  button.setAttribute("onclick", "window.ran = 'event handler attribute'");
  document.body.append(button);
  button.click();
  // A script of the page's own origin (routed by the test) tries eval: from the page, as
  // DevTools' own evaluation (this function) may eval whatever the policy says.
  const probe = document.createElement("script");
  probe.src = "/csp-probe.js";
  document.body.append(probe);
  const image = document.createElement("img");
  image.src = "http://example.com/tracker.png";
  document.body.append(image);
  setTimeout(() => resolve({ seen: seen.sort(), ran: window.ran ?? null }), 500);
})"""

EVAL_PROBE = "try { eval(\"window.ran = 'eval'\"); } catch {}"


def directives(policy: str) -> dict[str, list[str]]:
    parsed = (part.split() for part in policy.split(";") if part.strip())
    return {name: sources for name, *sources in parsed}


async def test_page_policy_allows_only_its_own_scripts(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    await open_new_chat(page, live_server_url, user)

    response = await page.reload()

    assert response is not None
    policy = directives(await response.header_value("content-security-policy") or "")
    assert policy["script-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert not [s for sources in policy.values() for s in sources if s.startswith("'unsafe-")]


async def test_streaming_a_rendered_reply_violates_nothing(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(words=MARKDOWN_REPLY, token_delay=0.05)
    await open_new_chat(page, live_server_url, user)

    await send(page, "Some Markdown, please")

    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    await expect(last_reply(page).locator(".code-block")).to_be_visible()
    # Nothing inline for the policy to allow: no script without a file, no on* attribute.
    inline = await page.evaluate(
        """() => document.querySelectorAll("script:not([src])").length +
            [...document.querySelectorAll("*")].filter(
              (el) => [...el.attributes].some((a) => a.name.startsWith("on"))).length"""
    )
    assert inline == 0
    # The `page` fixture fails the test on any violation reported meanwhile.


async def test_policy_reports_what_it_blocks(
    browser: Browser, live_server_url: str, user: AbstractBaseUser
) -> None:
    # A page of its own: these violations are on purpose, and the `page` fixture would fail.
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.route("**/csp-probe.js", lambda route: route.fulfill(body=EVAL_PROBE))
        await open_new_chat(page, live_server_url, user)

        outcome = await page.evaluate(FORBIDDEN)

        assert outcome == {
            "seen": ["img-src", "script-src", "script-src-attr", "script-src-elem"],
            "ran": None,
        }
    finally:
        await context.close()
