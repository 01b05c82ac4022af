"""The chat page in a real Chromium, against the app served by a real daphne.

daphne runs as a child process on the test database, configured through the environment
as in production; the model is our own OpenAI-compatible server, on a thread of this
process, reached over HTTP. (Not `ChannelsLiveServerTestCase`: it forks this process, and
a fork copies state that belongs to threads which do not survive it, such as asgiref's
ORM thread or psycopg's pool, so the child hangs on its first query once earlier tests
have used them.)

Playwright's async API: its sync API keeps an event loop marked as running for as long as
it is open, and Django then refuses every ORM call of the test (SynchronousOnlyOperation).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Request,
    WebSocketRoute,
    async_playwright,
    expect,
)

from chat.models import Conversation, Message
from tests.conftest import PASSWORD
from tests.live_daphne import serve
from tests.llm_server import Behaviour, FakeLLM, expected_text
from tests.polling import wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # One browser for the module, so one event loop for the module.
    pytest.mark.asyncio(loop_scope="module"),
]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
MARKUP = "<img src=x onerror=alert(1)>"
SCREENSHOT = "/tmp/chat.png"  # noqa: S108 - looked at by a person, not read back
# What went wrong on each open page (see the `page` fixture).
PROBLEMS: dict[Page, list[str]] = {}
# Every page of a test reports what its Content-Security-Policy blocked (run by the
# browser before the page's own scripts, whatever the policy).
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) =>
  window.reportViolation(`${event.effectiveDirective} blocked ${event.blockedURI}`),
);
"""


# --- The server and the browser ----------------------------------------------------------


@pytest.fixture(scope="module")
def live_server_url(django_db_setup: None, llm_server: FakeLLM) -> Iterator[str]:
    """daphne serving the app on the test database, its model pointed at `llm_server`."""
    with serve(llm_server) as server:
        yield server.url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(live_server_url: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, llm_server: FakeLLM, live_server_url: str) -> AsyncIterator[Page]:
    llm_server.reset()
    context = await browser.new_context(viewport={"width": 1000, "height": 720})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    # Any alert() would mean that model output or user input ran as code; a script error,
    # an error in the console or a CSP violation would mean the page is broken in ways its
    # text may not show; a request to anywhere but the app, that a reply made the page
    # fetch something.
    problems = PROBLEMS.setdefault(page, [])

    async def dismiss(dialog: Dialog) -> None:
        problems.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    def check_console(message: ConsoleMessage) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            problems.append(f"console: {message.text}")

    def check_request(request: Request) -> None:
        if not request.url.startswith(f"{live_server_url}/"):
            problems.append(f"request: {request.url}")

    page.on("dialog", dismiss)
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("console", check_console)
    page.on("request", check_request)
    await page.expose_function("reportViolation", lambda text: problems.append(f"CSP: {text}"))
    await page.add_init_script(REPORT_CSP_VIOLATIONS)
    yield page
    await context.close()
    assert PROBLEMS.pop(page) == []


def forgive(page: Page, text: str) -> None:
    """Drops the problems seen on `page` so far that hold `text`: for a test that causes
    them on purpose."""
    PROBLEMS[page] = [problem for problem in PROBLEMS[page] if text not in problem]


# --- Steps -------------------------------------------------------------------------------


async def log_in(page: Page, live_server_url: str, user: AbstractBaseUser) -> None:
    await page.goto(f"{live_server_url}/")
    await expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    await page.fill("#id_username", user.get_username())
    await page.fill("#id_password", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{live_server_url}/")


async def open_new_chat(page: Page, live_server_url: str, user: AbstractBaseUser) -> None:
    """Log in and click "New chat": a draft, stored by its first send."""
    await log_in(page, live_server_url, user)
    await page.get_by_role("link", name="New chat").click()
    await expect(page).to_have_url(f"{live_server_url}/new/")
    await expect(page.locator("#chat")).to_have_attribute("data-connection", "draft")


async def open_stored_chat(
    page: Page, live_server_url: str, user: AbstractBaseUser, model: str = "test-model"
) -> Conversation:
    """Log in and open an empty conversation stored beforehand, its socket live."""
    conversation = await Conversation.objects.acreate(owner_id=user.pk, model=model)
    await log_in(page, live_server_url, user)
    await page.goto(f"{live_server_url}/c/{conversation.id}/")
    await expect(page.locator("#chat")).to_have_attribute("data-connection", "live")
    return conversation


async def send(page: Page, text: str) -> None:
    await page.fill("#composer-input", text)
    await page.press("#composer-input", "Enter")


def last_reply(page: Page) -> Locator:
    return page.locator(".message--assistant").last


async def reply_text(page: Page) -> str:
    """The last reply's text as shown: rendered as Markdown, so without trailing spaces."""
    text = await last_reply(page).locator(".message__content").text_content()
    return (text or "").strip()


def shown(tokens: int) -> str:
    """How the default reply of `tokens` tokens shows (one paragraph)."""
    return expected_text(tokens).strip()


# --- Tests -------------------------------------------------------------------------------


async def test_reply_streams_in(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=40, token_delay=0.05)
    await open_new_chat(page, live_server_url, user)

    await send(page, "Hello there")

    await expect(page.locator(".message--user .message__content")).to_have_text("Hello there")
    await expect(page.locator("#composer-input")).to_have_value("")  # cleared once echoed
    reply = last_reply(page)
    await expect(reply.locator(".message__content")).to_contain_text("w3 ")
    # Still streaming: the text arrives in parts, and Stop is offered meanwhile.
    await expect(reply).to_have_attribute("data-status", "streaming")
    await expect(page.locator("#stop")).to_be_visible()
    await expect(reply).to_have_attribute("data-status", "complete")
    assert await reply_text(page) == shown(40)
    await expect(page.locator("#stop")).to_be_hidden()
    await expect(reply.get_by_role("button", name="Regenerate")).to_be_visible()
    await expect(page.locator("#conversation-title")).to_have_text("Hello there")
    await page.screenshot(path=SCREENSHOT)


async def test_reload_mid_reply_shows_whole_reply(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=80, token_delay=0.05)
    await open_new_chat(page, live_server_url, user)
    await send(page, "Tell me a long story")
    await expect(last_reply(page).locator(".message__content")).to_contain_text("w5 ")

    await page.reload()

    # Reattached while the reply still runs, then followed to its end.
    await expect(page.locator("#chat")).to_have_attribute("data-connection", "live")
    await expect(last_reply(page)).to_have_attribute("data-status", "streaming")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    assert await reply_text(page) == shown(80)
    # The `state` frame replaced the server-rendered transcript: nothing doubled.
    await expect(page.locator(".message")).to_have_count(2)


async def test_stop_mid_reply_then_regenerate(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(tokens=400, token_delay=0.05)
    await open_new_chat(page, live_server_url, user)
    await send(page, "Count forever")
    reply = last_reply(page)
    await expect(reply.locator(".message__content")).to_contain_text("w3 ")

    await page.click("#stop")

    await expect(reply).to_have_attribute("data-status", "stopped")
    await expect(reply.locator(".message__status")).to_have_text("stopped")
    await expect(page.locator("#stop")).to_be_hidden()
    partial = await reply_text(page)
    assert expected_text(400).startswith(partial)
    assert 0 < len(partial) < len(expected_text(400))
    stored = await Message.objects.aget(role="assistant")
    assert (stored.status, stored.content.strip()) == ("stopped", partial)

    llm_server.behaviour = Behaviour(tokens=5, token_delay=0.01)
    # A stopped reply offers to ask again, in those words.
    await expect(reply.get_by_role("button", name="Regenerate")).to_have_count(0)
    await reply.get_by_role("button", name="Retry").click()

    # The stopped reply is replaced by a new one, which offers Regenerate again.
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    await expect(page.locator(".message")).to_have_count(2)
    assert await reply_text(page) == shown(5)
    await expect(last_reply(page).get_by_role("button", name="Regenerate")).to_be_visible()


async def test_failed_reply_offers_retry(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(fault="500")
    await open_new_chat(page, live_server_url, user)
    await send(page, "Fail, please")
    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "failed")
    await expect(reply.locator(".message__status")).to_contain_text("failed")
    await expect(reply.get_by_role("button", name="Regenerate")).to_have_count(0)
    await expect(reply.get_by_role("button", name="Continue")).to_have_count(0)

    llm_server.behaviour = Behaviour(tokens=5)
    await reply.get_by_role("button", name="Retry").click()

    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    await expect(page.locator(".message")).to_have_count(2)
    assert await reply_text(page) == shown(5)


async def test_continue_an_interrupted_reply(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    """A reply cut by its server (here: stopped, then marked as a dead server leaves it)
    shows Continue, and goes on in the same message where it was cut."""
    llm_server.behaviour = Behaviour(tokens=400, token_delay=0.05)
    await open_new_chat(page, live_server_url, user)
    await send(page, "Count forever")
    await expect(last_reply(page).locator(".message__content")).to_contain_text("w3 ")
    await page.click("#stop")
    await expect(last_reply(page)).to_have_attribute("data-status", "stopped")
    await expect(last_reply(page).get_by_role("button", name="Continue")).to_have_count(0)
    stored = await Message.objects.aget(role="assistant")
    stored.status, stored.error_code = Message.Status.INTERRUPTED, "interrupted"
    await stored.asave(update_fields=["status", "error_code"])
    partial = stored.content

    await page.reload()
    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "interrupted")
    llm_server.behaviour = Behaviour(tokens=5, token_delay=0.01)
    await reply.get_by_role("button", name="Continue").click()

    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    await expect(page.locator(".message--assistant")).to_have_count(1)
    assert await reply_text(page) == (partial + expected_text(5)).strip()
    await stored.arefresh_from_db()
    assert stored.content == partial + expected_text(5)


async def test_markup_shows_as_literal_text(
    page: Page, live_server_url: str, user: AbstractBaseUser, llm_server: FakeLLM
) -> None:
    llm_server.behaviour = Behaviour(words=["Echo: ", MARKUP, " <b>bold</b>"])
    literal_reply = f"Echo: {MARKUP} <b>bold</b>"
    await open_new_chat(page, live_server_url, user)

    await send(page, MARKUP)

    await expect(page.locator(".message--user .message__content")).to_have_text(MARKUP)
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    assert await reply_text(page) == literal_reply
    await expect(page.locator("#conversation-title")).to_have_text(MARKUP)
    # Nothing was parsed as HTML, neither live nor after a reload (server-rendered first).
    await expect(page.locator("#transcript img, #transcript b")).to_have_count(0)
    await page.reload()
    await expect(last_reply(page).locator(".message__content")).to_have_text(literal_reply)
    await expect(page.locator("#transcript img, #transcript b")).to_have_count(0)


async def test_a_message_too_long_is_refused_on_the_page_and_stores_nothing(
    page: Page, live_server_url: str, user: AbstractBaseUser
) -> None:
    """Said before anything is stored: a draft's first send creates no conversation."""
    await open_new_chat(page, live_server_url, user)
    too_long = "é" * (settings.CHAT_MAX_INPUT_CHARS + 1)  # code points, as the server counts

    await send(page, too_long)

    notice = page.locator(".notice")
    await expect(notice).to_contain_text(
        f"at most {settings.CHAT_MAX_INPUT_CHARS} characters; "
        f"this one has {settings.CHAT_MAX_INPUT_CHARS + 1}"
    )
    await expect(page.locator("#composer-input")).to_have_value(too_long)
    await expect(page.locator("#chat")).to_have_attribute("data-connection", "draft")
    assert not await Conversation.objects.aexists()

    # Shortened, it goes.
    await notice.get_by_role("button", name="Dismiss").click()
    await expect(notice).to_have_count(0)
    await send(page, "Short enough")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    assert await Message.objects.filter(content="Short enough").aexists()


async def test_refused_message_keeps_the_draft(
    page: Page, live_server_url: str, user: AbstractBaseUser
) -> None:
    """The server's own refusal: a page loaded before the limit was lowered."""
    await open_stored_chat(page, live_server_url, user)
    await page.evaluate("document.getElementById('chat').dataset.maxInputChars = '1000000'")
    too_long = "x" * (settings.CHAT_MAX_INPUT_CHARS + 1)

    await send(page, too_long)

    notice = page.locator(".notice")
    await expect(notice).to_contain_text("at most")
    await expect(page.locator("#composer-input")).to_have_value(too_long)
    assert not await Message.objects.aexists()
    await notice.get_by_role("button", name="Dismiss").click()
    await expect(notice).to_have_count(0)
    assert await Conversation.objects.acount() == 1


# --- Dropped sockets ---------------------------------------------------------------------


class SocketSwitch:
    """Stands between the page and daphne: passes its websockets through, or refuses them."""

    def __init__(self) -> None:
        self.up = True
        self.attempts = 0
        self.drop_delta: int | None = None  # the seq of one delta to lose on its way
        self.delay_question = False  # hand on the user's message after the next frame
        self.held: str | bytes | None = None
        self.current: WebSocketRoute | None = None

    async def route(self, page_side: WebSocketRoute) -> None:
        self.attempts += 1
        self.current = page_side
        if not self.up:
            await page_side.close(code=1011)
            return
        server_side = page_side.connect_to_server()
        server_side.on_message(lambda message: self.forward(page_side, message))

    def forward(self, page_side: WebSocketRoute, message: str | bytes) -> None:
        frame = json.loads(message)
        if frame["type"] == "delta" and frame["seq"] == self.drop_delta:
            self.drop_delta = None
            return
        if (
            self.delay_question
            and frame["type"] == "message"
            and frame["message"]["role"] == "user"
        ):
            self.delay_question, self.held = False, message
            return
        page_side.send(message)
        if self.held is not None:
            page_side.send(self.held)
            self.held = None

    async def drop(self) -> None:
        assert self.current is not None
        await self.current.close(code=1011)


@pytest_asyncio.fixture(loop_scope="module")
async def switch(page: Page) -> SocketSwitch:
    switch = SocketSwitch()
    await page.route_web_socket(re.compile(r"/ws/conversations/"), switch.route)
    return switch


async def test_draft_typed_while_down_is_sent_on_reconnect(
    page: Page,
    switch: SocketSwitch,
    live_server_url: str,
    user: AbstractBaseUser,
    llm_server: FakeLLM,
) -> None:
    llm_server.behaviour = Behaviour(tokens=5)
    await open_stored_chat(page, live_server_url, user)
    switch.up = False
    await switch.drop()
    await expect(page.locator("#connection")).to_have_text("reconnecting…")

    await send(page, "Sent while offline")

    await expect(page.locator("#connection")).to_contain_text("will be sent")
    async with asyncio.timeout(5):
        await wait_until(lambda: switch.attempts >= 2)  # a refused retry
    await expect(page.locator("#composer-input")).to_have_value("Sent while offline")
    switch.up = True
    await expect(page.locator(".message--user .message__content")).to_have_text(
        "Sent while offline", timeout=15_000
    )
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    assert await reply_text(page) == shown(5)
    await expect(page.locator("#composer-input")).to_have_value("")
    await expect(page.locator("#connection")).to_be_hidden()
    assert await Message.objects.filter(role="user").acount() == 1


async def test_gap_in_deltas_resyncs(
    page: Page,
    switch: SocketSwitch,
    live_server_url: str,
    user: AbstractBaseUser,
    llm_server: FakeLLM,
) -> None:
    llm_server.behaviour = Behaviour(tokens=40, token_delay=0.05)
    await open_new_chat(page, live_server_url, user)
    switch.drop_delta = 2

    await send(page, "Hello")

    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    assert await reply_text(page) == shown(40)
    assert switch.attempts == 2  # the gap made the page reconnect once
    await expect(page.locator(".message")).to_have_count(2)


async def test_deleted_conversation_says_not_found(
    page: Page, switch: SocketSwitch, live_server_url: str, user: AbstractBaseUser
) -> None:
    await open_stored_chat(page, live_server_url, user)
    await Conversation.objects.all().adelete()

    await switch.drop()

    await expect(page.locator(".notice")).to_have_text("Conversation not found.")
    await expect(page.locator("#composer-input")).to_be_disabled()
    # Time passes on purpose: longer than the first two backoff steps, so a retry that the
    # page must not make would have been made by now.
    await asyncio.sleep(1.5)
    assert switch.attempts == 2


async def test_logged_out_goes_to_login(
    page: Page, switch: SocketSwitch, live_server_url: str, user: AbstractBaseUser
) -> None:
    await open_stored_chat(page, live_server_url, user)
    chat_path = page.url.removeprefix(live_server_url)
    await page.context.clear_cookies()

    await switch.drop()

    await expect(page).to_have_url(f"{live_server_url}/accounts/login/?next={chat_path}")


async def test_question_shows_above_its_answer_whatever_arrives_first(
    page: Page,
    switch: SocketSwitch,
    live_server_url: str,
    user: AbstractBaseUser,
    llm_server: FakeLLM,
) -> None:
    # As for a tab that connects while another sends: the reply is heard of first.
    llm_server.behaviour = Behaviour(tokens=5)
    await open_new_chat(page, live_server_url, user)
    switch.delay_question = True
    await send(page, "Which comes first?")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    roles = await page.locator("#transcript > li").evaluate_all(
        "items => items.map(item => item.classList.contains('message--user') ? 'user' : 'bot')"
    )
    assert roles == ["user", "bot"]
