"""A rolling restart under running chats (issue 11): nginx (deploy/nginx.conf) in front of
two daphne processes on one database and one Redis, 20 conversations each streaming a
long reply watched from a tab through the proxy, and every process restarted in turn
while they run: SIGTERM, its exit, a fresh process on its port, /healthz ready, then the
next. No reply is lost: each ends `complete` with the model's whole text, written once,
its usage counted; and every tab, reconnecting through the proxy as the page does, ends
with the stored text, no delta missed or repeated after its last `state`."""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.processes import free_port
from chat.models import Conversation, Message, UsageRecord
from tests import live_daphne, live_nginx
from tests.live_tabs import REDIS_URL, send_frame
from tests.llm_server import Behaviour, FakeLLM, expected_text
from tests.polling import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

CHATS = 20
# Each reply streams for about 24 s: longer than both restarts together (5-16 s here), so
# that every process is stopped while replies run on it. Asked to go on, the model writes
# the rest of its reply after the text saved (as a model does), so a reply continued once
# or twice still holds its text exactly once.
TOKENS, TOKEN_DELAY = 600, 0.04
READY_TIMEOUT = 30.0  # seconds, from SIGTERM to the fresh process answering /healthz
ALL_DONE_TIMEOUT = 120.0  # from the first restart to the last tab's `done`
RECONNECT_DELAY = 0.25  # as the page waits before it tries again
QUIET_TIMEOUT = 20.0  # a socket this long without a frame is given up, and reopened
HANDED_OVER = re.compile(r"handed (\d+) replies over")


# --- The site: nginx in front of two processes it can restart -----------------------------


@dataclass
class Process:
    """One of the site's daphne processes, on a port that outlives it."""

    server: live_daphne.LiveServer
    generation: int = 1

    @property
    def port(self) -> int:
        return self.server.port


@dataclass
class Restart:
    port: int
    exited_after: float  # seconds from SIGTERM to its exit
    ready_after: float  # from SIGTERM to the fresh process answering /healthz


@dataclass
class Site:
    llm_server: FakeLLM
    folder: Path
    environment: dict[str, str]
    processes: list[Process]
    proxy: live_nginx.LiveProxy | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self, port: int = 0) -> live_daphne.LiveServer:
        log = self.folder / f"daphne-{len(self.logs)}.log"
        self.logs.append(log)
        return live_daphne.start(self.llm_server, log, self.environment, port)

    async def restart(self, process: Process) -> Restart:
        """SIGTERM, wait for the exit, start a fresh process on the same port, and wait
        until it says it is ready."""
        stopping = process.server.process
        began = time.monotonic()
        stopping.terminate()
        async with asyncio.timeout(live_daphne.SERVER_STOP_TIMEOUT):
            await wait_until(lambda: stopping.poll() is not None, interval=0.05)
        exited_after = time.monotonic() - began
        assert stopping.returncode == 0, self.log_of(process)
        process.server = await asyncio.to_thread(self.start, process.port)
        process.generation += 1
        async with asyncio.timeout(READY_TIMEOUT - (time.monotonic() - began)):
            await wait_until(lambda: answers_healthz(process.server), interval=0.1)
        return Restart(process.port, exited_after, time.monotonic() - began)

    def log_of(self, process: Process) -> str:
        return process.server.log.read_text()

    def handed_over(self) -> list[int]:
        """How many replies each process handed over as it stopped, as its log says."""
        counts = []
        for log in self.logs:
            found = (HANDED_OVER.search(line) for line in lines(log))
            counts.append(sum(int(match.group(1)) for match in found if match))
        return counts


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def answers_healthz(server: live_daphne.LiveServer) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.url + "/healthz", timeout=aiohttp.ClientTimeout(total=3)) as answer,
        ):
            return answer.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@contextmanager
def nginx_site(llm_server: FakeLLM) -> Iterator[Site]:
    """nginx on free ports in front of two daphne processes, as tests/test_proxy.py runs
    deploy/nginx.conf."""
    live_nginx.require_nginx()
    https_port, http_port = free_port(), free_port()
    origin = f"https://{live_nginx.HOST}:{https_port}"
    environment = live_nginx.app_environment(origin, REDIS_URL)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "static").mkdir()
        site = Site(llm_server, folder, environment, [])
        try:
            for _ in range(2):
                site.processes.append(Process(site.start()))
            with live_nginx.serve(
                folder,
                upstream_ports=[process.port for process in site.processes],
                static_root=folder / "static",
                https_port=https_port,
                http_port=http_port,
            ) as site.proxy:
                yield site
        finally:
            for process in site.processes:
                live_daphne.stop(process.server.process)


# --- A tab: the page's socket, reconnecting through the proxy -----------------------------


@dataclass
class Tab:
    """One conversation's tab through the proxy, kept as the page keeps it
    (chat/static/chat/conversation.js): each `state` renders the reply anew, a `message`
    that (re)starts it counts its deltas from 1, each delta must follow the last by one;
    a closed socket is opened again. What the page would have to mend is a fault."""

    http: aiohttp.ClientSession
    url: str
    origin: str
    reply: str | None = None  # the assistant message this tab's send started
    text: str = ""
    seq: int = 0
    status: str = ""
    connections: int = 0
    states: int = 0
    faults: list[str] = field(default_factory=list)
    longest_quiet: float = 0.0  # seconds between two frames, reconnecting included
    _last_frame_at: float = 0.0
    # What happened to it, "<seconds since the test began> <what>", for a failure's message.
    timeline: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    _noted: str = ""

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.began:6.2f} {what}")
        self._noted = what

    @property
    def ended(self) -> bool:
        return self.reply is not None and self.status in ("complete", "stopped", "failed")

    async def follow(self, content: str, running: asyncio.Event) -> None:
        """Send `content` once connected, and follow its reply until it ends; `running`
        is set at its first delta."""
        sent = False
        while not self.ended:
            try:
                async with self.http.ws_connect(
                    self.url, origin=self.origin, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                ) as socket:
                    self.connections += 1
                    self.note("connected")
                    while not self.ended:
                        message = await socket.receive(timeout=QUIET_TIMEOUT)
                        if message.type != aiohttp.WSMsgType.TEXT:
                            self.note(f"closed ({message.type.name} {message.data})")
                            break  # the page reconnects
                        frame = json.loads(message.data)
                        self.render(frame)
                        if frame["type"] == "state" and not sent:
                            await socket.send_json(send_frame(content))
                            sent = True
                        if self.seq and not running.is_set():
                            running.set()
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                # Refused, reset or quiet: tried again, as the page does.
                self.note(f"not connected: {exc!r}"[:120])
            if not self.ended:
                await asyncio.sleep(RECONNECT_DELAY)

    def render(self, frame: dict[str, Any]) -> None:
        now = time.monotonic()
        if self._last_frame_at:
            self.longest_quiet = max(self.longest_quiet, now - self._last_frame_at)
        self._last_frame_at = now
        kind = frame["type"]
        if kind != "delta" or not self._noted.startswith("delta"):  # the first of a run
            self.note(describe(frame))
        if kind == "state":
            self.states += 1
            assistant = [m for m in frame["messages"] if m["role"] == "assistant"]
            if self.reply is None and assistant:
                self.reply = assistant[-1]["id"]
            for message in assistant:
                if message["id"] == self.reply:
                    self.text, self.status, self.seq = message["content"], message["status"], 0
            streaming = frame["streaming"]
            if streaming is not None and streaming["message_id"] == self.reply:
                self.text, self.seq, self.status = (
                    streaming["content"],
                    streaming["seq"],
                    "streaming",
                )
        elif kind == "message" and frame["message"]["role"] == "assistant":
            message = frame["message"]
            self.reply = self.reply or message["id"]
            if message["status"] != "streaming":
                self.text = message["content"]
            elif self.status != "streaming":  # (re)started: its deltas count from 1
                self.text, self.seq = message["content"], 0
            self.status = message["status"]
        elif kind == "delta":
            self.take_delta(frame)
        elif kind == "done":
            if self.status == "streaming" and frame["content"] != self.text:
                self.fault(
                    f"`done` ({frame['status']}) holds {len(frame['content'])} characters, "
                    f"the deltas built {len(self.text)}"
                )
            self.text, self.status = frame["content"], frame["status"]
        elif kind == "error":
            self.fault(f"error frame {frame}")

    def fault(self, what: str) -> None:
        self.faults.append(what)
        self.note(f"FAULT {what}")

    def take_delta(self, frame: dict[str, Any]) -> None:
        if frame["message_id"] != self.reply:
            self.fault(f"a delta of another message {frame['message_id']}")
        elif frame["seq"] <= self.seq:
            self.fault(f"delta {frame['seq']} again, after {self.seq}")
        elif frame["seq"] != self.seq + 1:
            self.fault(f"delta {frame['seq']} after {self.seq}: a gap")
        elif self.status != "streaming":
            self.fault(f"delta {frame['seq']} of a reply {self.status}")
        else:
            self.seq = frame["seq"]
            self.text += frame["text"]


def describe(frame: dict[str, Any]) -> str:
    """A frame in a few words."""
    kind = frame["type"]
    if kind == "state":
        streaming = frame["streaming"]
        last = frame["messages"][-1] if frame["messages"] else None
        where = f"streaming seq {streaming['seq']}" if streaming else "not streaming"
        said = f", last message {last['status']} {len(last['content'])}" if last else ""
        return f"state: {where}{said}"
    if kind == "message":
        message = frame["message"]
        return f"message {message['role']} {message['status']} {len(message['content'])}"
    if kind == "delta":
        return f"delta {frame['seq']}"
    if kind == "done":
        return f"done {frame['status']} {len(frame['content'])}"
    return str(kind)


@asynccontextmanager
async def browser(cookie: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser's HTTP client that takes the test's self-signed certificate."""
    connector = aiohttp.TCPConnector(ssl=False, limit=0)
    async with aiohttp.ClientSession(headers={"Cookie": cookie}, connector=connector) as http:
        yield http


# --- The test -----------------------------------------------------------------------------


async def test_a_rolling_restart_under_20_running_chats_loses_none(llm_server, user, login_cookie):
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=TOKENS, token_delay=TOKEN_DELAY, continues=True)
    conversations = [
        await Conversation.objects.acreate(owner=user, model="test-model", title=f"Chat {n}")
        for n in range(CHATS)
    ]
    cookie = await login_cookie(user)
    with nginx_site(llm_server) as site:
        assert site.proxy is not None
        origin = site.proxy.url
        async with browser(cookie) as http:
            tabs = [
                Tab(http, origin.replace("https", "wss") + f"/ws/conversations/{c.id}/", origin)
                for c in conversations
            ]
            running = [asyncio.Event() for _ in tabs]
            following = [
                asyncio.create_task(tab.follow(f"Chat {n}, go on", started))
                for n, (tab, started) in enumerate(zip(tabs, running, strict=True))
            ]
            try:
                async with asyncio.timeout(30):
                    await asyncio.gather(*(started.wait() for started in running))
                began = time.monotonic()
                restarts = [await site.restart(process) for process in site.processes]
                restarted_after = time.monotonic() - began
                # Tabs still waiting then are told apart below, each with what it saw.
                await asyncio.wait(following, timeout=ALL_DONE_TIMEOUT)
            finally:
                for task in following:
                    task.cancel()
                await asyncio.gather(*following, return_exceptions=True)
            all_done_after = time.monotonic() - began
        handed_over = site.handed_over()
        requests = len(llm_server.requests)

    replies = {str(m.pk): m async for m in Message.objects.filter(role="assistant")}
    usage = {str(r.message_id): r async for r in UsageRecord.objects.all()}
    timings = [(round(r.exited_after, 1), round(r.ready_after, 1)) for r in restarts]
    print(  # with -s: the figures of the README's "Deployment"
        f"\nrestarts (exited, ready after SIGTERM, s): {timings}, all in {restarted_after:.1f} s;"
        f" every reply done {all_done_after:.1f} s after the first SIGTERM; handed over by"
        f" each process: {handed_over}; longest a tab went without a frame:"
        f" {max(t.longest_quiet for t in tabs):.1f} s; sockets per tab:"
        f" {sorted(t.connections for t in tabs)}"
    )
    assert len(replies) == CHATS
    for n, tab in enumerate(tabs):
        assert tab.reply in replies, f"tab {n} never learned its reply"
        stored = replies[tab.reply]
        assert stored.conversation_id == conversations[n].pk
        assert (stored.status, stored.content) == ("complete", expected_text(TOKENS)), (
            f"chat {n}: {stored.status}, {len(stored.content)} characters; its tab:\n"
            + "\n".join(tab.timeline)
        )
        assert tab.faults == [], f"tab {n}: {tab.faults}\n" + "\n".join(tab.timeline)
        assert (tab.status, tab.text) == ("complete", stored.content), f"tab {n}"
        # Every token counted once: a reply cut and continued counts (estimates) what its
        # first request streamed, and the model's own count of the rest.
        assert stored.completion_tokens == TOKENS, f"chat {n}"
        assert stored.prompt_tokens and stored.total_tokens == (
            stored.prompt_tokens + stored.completion_tokens
        )
        assert usage[tab.reply].total_tokens == stored.total_tokens
    # Both processes ran replies when they were stopped (the fresh ones none). Each reply
    # handed over asked the model once more at most: one taken over just as its new
    # process stopped may be handed over again before its request went out.
    assert all(handed_over[:2]) and not any(handed_over[2:]), handed_over
    assert CHATS < requests <= CHATS + sum(handed_over), (requests, handed_over)
    assert sum(1 for m in replies.values() if m.usage_estimated) <= sum(handed_over)
