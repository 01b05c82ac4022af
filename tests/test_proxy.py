"""The deployment of deploy/nginx.conf: Debian's nginx, over HTTPS, in front of two daphne
processes that share the database and Redis. Through it a tab's socket opens (the upgrade
passes) and streams its reply, an API reply streams event by event (not buffered to its
end), the static files come from nginx, requests alternate between the processes, and Stop
from a tab on one process stops the reply the other runs."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from bench.processes import free_port
from chat.models import Message
from tests import live_daphne, live_nginx
from tests.api_client import atoken_headers, parse, url
from tests.live_tabs import REDIS_URL
from tests.llm_server import Behaviour, FakeLLM, expected_text
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

STYLESHEET = Path(settings.BASE_DIR) / "chat" / "static" / "chat" / "chat.css"


@dataclass
class Site:
    proxy: live_nginx.LiveProxy
    processes: list[live_daphne.LiveServer]

    def served(self, request: str) -> list[int]:
        """How many times each process has logged `request` ("GET /healthz")."""
        return [process.log.read_text().count(f'"{request}') for process in self.processes]


@pytest.fixture(scope="module")
def site(django_db_setup: None, llm_server: FakeLLM) -> Iterator[Site]:
    """nginx on free ports in front of two daphne processes, for the module's tests."""
    live_nginx.require_nginx()
    https_port, http_port = free_port(), free_port()
    origin = f"https://{live_nginx.HOST}:{https_port}"
    # What deploy/nginx.conf asks of the app, and an app that redirects plain HTTP: only a
    # proxy that says it took HTTPS gets through.
    environment = {
        **live_nginx.app_environment(origin, REDIS_URL),
        "DJANGO_SECURE_SSL_REDIRECT": "1",
        "PYTHONUNBUFFERED": "1",  # each access log line as it happens
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        static_root = folder / "static"
        with override_settings(STATIC_ROOT=static_root):
            call_command("collectstatic", interactive=False, verbosity=0)
        with (
            live_daphne.serve(llm_server, **environment) as one,
            live_daphne.serve(llm_server, **environment) as two,
            live_nginx.serve(
                folder,
                upstream_ports=[one.port, two.port],
                static_root=static_root,
                https_port=https_port,
                http_port=http_port,
            ) as proxy,
        ):
            yield Site(proxy, [one, two])
            # At its default level nginx logs only errors: a refused upstream, a response
            # cut short, a bad header. None may have happened.
            assert proxy.error_log.read_text() == ""


@asynccontextmanager
async def browser(cookie: str = "") -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that takes the test's self-signed certificate."""
    headers = {"Cookie": cookie} if cookie else {}
    async with aiohttp.ClientSession(
        headers=headers, connector=aiohttp.TCPConnector(ssl=False)
    ) as http:
        yield http


def open_tab(http: aiohttp.ClientSession, site: Site, conversation: Any) -> Any:
    """A conversation's socket through the proxy, from a page of the site."""
    path = f"/ws/conversations/{conversation.id}/"
    return http.ws_connect(site.proxy.url.replace("https", "wss") + path, origin=site.proxy.url)


async def next_frame(tab: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads((await tab.receive(timeout=10)).data)
    return frame


async def send(tab: aiohttp.ClientWebSocketResponse, content: str) -> None:
    await tab.send_json({"type": "send", "content": content, "client_msg_id": str(uuid.uuid4())})


async def wait_for_log(site: Site, request: str, counts: list[int]) -> None:
    """Until the processes' logs show `request` as often as `counts` says."""
    async with asyncio.timeout(5):
        await wait_until(lambda: site.served(request) == counts, interval=0.05)


# --- Through the proxy --------------------------------------------------------------------


async def test_proxy_socket_upgrades_and_streams_a_reply(
    site, llm_server, conversation, user, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=20, token_delay=0.01)
    async with (
        browser(await login_cookie(user)) as http,
        open_tab(http, site, conversation) as tab,
    ):
        assert (await next_frame(tab))["type"] == "state"
        await send(tab, "Hello through nginx")
        frames = []
        while (frame := await next_frame(tab))["type"] != "done":
            frames.append(frame)
    assert frame["status"] == "complete" and frame["content"] == expected_text(20)
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [f["seq"] for f in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(f["text"] for f in deltas) == expected_text(20)


async def test_proxy_passes_event_streams_unbuffered(site, llm_server, conversation, user):
    """The first delta arrives while the model is still writing, well before `done`; a
    buffering proxy would hold them all (a few KB) until the stream ends."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=30, token_delay=0.05)  # 1.5 s of reply
    headers = {**await atoken_headers(user), "Accept": "text/event-stream"}
    arrivals: list[tuple[float, str, dict[str, Any]]] = []
    async with browser() as http:
        start = time.monotonic()
        async with http.post(
            site.proxy.url + url(conversation, "messages"),
            json={"content": "Stream it"},
            headers=headers,
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            block = ""
            async for line in response.content:
                block += line.decode()
                if block.endswith("\n\n"):
                    if (event := parse(block)) is not None:
                        arrivals.append((time.monotonic() - start, event.event, event.data))
                    block = ""
    first_delta = next(at for at, kind, _ in arrivals if kind == "delta")
    done_at, kind, done = arrivals[-1]
    assert kind == "done" and done["content"] == expected_text(30)
    assert done_at - first_delta > 1.0, arrivals
    delta_times = {round(at, 1) for at, kind, _ in arrivals if kind == "delta"}
    assert len(delta_times) >= 5, arrivals  # they came one after another, not in one batch


async def test_proxy_serves_static_files_itself(site):
    async with browser() as http, http.get(site.proxy.url + "/static/chat/chat.css") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/css")
        assert "max-age=3600" in response.headers["Cache-Control"]
        assert await response.read() == STYLESHEET.read_bytes()
    assert site.served("GET /static/") == [0, 0]  # no process saw it


async def test_proxy_redirects_plain_http_to_https(site):
    async with (
        browser() as http,
        http.get(site.proxy.plain_url + "/accounts/login/", allow_redirects=False) as response,
    ):
        assert response.status == 301
        assert response.headers["Location"] == f"https://{live_nginx.HOST}/accounts/login/"


async def test_proxy_takes_turns_between_the_processes(site):
    """Round robin, no stickiness: six requests on one connection, three to each process;
    a page comes through as served over HTTPS (X-Forwarded-Proto), where the processes
    redirect a plain HTTP request made to them directly."""
    before = site.served("GET /healthz")
    async with browser() as http:
        for _ in range(6):
            async with http.get(site.proxy.url + "/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok", "database": "ok", "redis": "ok"}
        async with http.get(site.proxy.url + "/accounts/login/") as response:
            assert response.status == 200 and not response.history
        direct = site.processes[0].url + "/accounts/login/"
        async with http.get(direct, allow_redirects=False) as response:
            assert response.status == 301
    await wait_for_log(site, "GET /healthz", [count + 3 for count in before])


@asynccontextmanager
async def tabs_on_both_processes(
    http: aiohttp.ClientSession, site: Site, conversation: Any
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse]]:
    """Two tabs of one conversation, opened one after the other through the proxy, that
    round robin puts on different processes (their logs say which)."""
    connect = f"WSCONNECT /ws/conversations/{conversation.id}/"
    before = site.served(connect)
    async with open_tab(http, site, conversation) as first:
        assert (await next_frame(first))["type"] == "state"
        async with open_tab(http, site, conversation) as second:
            assert (await next_frame(second))["type"] == "state"
            await wait_for_log(site, connect, [count + 1 for count in before])
            yield first, second


async def test_proxy_stop_from_a_tab_on_one_process_stops_the_reply_of_the_other(
    site, llm_server, conversation, user, login_cookie
):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=400, token_delay=0.02)
    async with (
        browser(await login_cookie(user)) as http,
        tabs_on_both_processes(http, site, conversation) as (runs_it, stops_it),
    ):
        await send(runs_it, "Long one")
        while (await next_frame(runs_it))["type"] != "delta":
            pass

        await stops_it.send_json({"type": "stop"})

        while (frame := await next_frame(runs_it))["type"] != "done":
            pass
        assert frame["status"] == "stopped"
    async with asyncio.timeout(5):
        await wait_until(lambda: llm_server.disconnects == 1)
    reply = await Message.objects.aget(pk=frame["message_id"])
    assert reply.status == "stopped" and reply.content


async def test_proxy_tab_on_the_other_process_watches_the_reply_stream(
    site, llm_server, conversation, user, login_cookie
):
    """Fan-out (chat.fanout): the tab on the process that does not run the reply gets
    every delta in order and the same `done`."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=40, token_delay=0.02)
    async with (
        browser(await login_cookie(user)) as http,
        tabs_on_both_processes(http, site, conversation) as (runs_it, watches_it),
    ):
        await send(runs_it, "Watch this")
        text = ""
        while (frame := await next_frame(watches_it))["type"] != "done":
            if frame["type"] == "delta":
                text += frame["text"]
    assert frame["status"] == "complete"
    assert text == frame["content"] == expected_text(40)
