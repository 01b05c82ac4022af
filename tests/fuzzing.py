"""What the fuzz tests share: their size, a live server whose log is read for errors, an
event loop for their clients, and another user's chats that must complete meanwhile.

The suite runs a small fuzz; `CHAT_FUZZ_EXAMPLES` sets how many examples each test draws
for the long one (`python -m bench.fuzz`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.test import Client
from hypothesis import HealthCheck, Phase, settings

from tests.live_daphne import LiveServer, serve
from tests.llm_server import Behaviour, FakeLLM, expected_text

T = TypeVar("T")

EXAMPLES = "CHAT_FUZZ_EXAMPLES"
REPORT = "CHAT_FUZZ_REPORT"  # a file: each test adds one JSON line of its figures

# The other user's chats: slow enough that many are streaming while the fuzz runs.
BYSTANDER_MODEL = "bystander-model"
BYSTANDER_REPLY = Behaviour(tokens=30, token_delay=0.01)
BYSTANDER_CHAT_TIMEOUT = 30.0  # seconds for one chat, send to done
BYSTANDER_LONGEST_GAP = 3.0  # seconds between two frames of a running reply
FRAME_TIMEOUT = 15.0  # seconds for the next frame a socket is waiting for

# A line of the server's log that no request may cause: an error, a traceback, a 5xx.
PROBLEM = re.compile(r"^(ERROR|CRITICAL) |Traceback \(most recent call last\)|\" 5\d\d ", re.M)


# --- Size --------------------------------------------------------------------------------------


def long_run() -> bool:
    return bool(os.environ.get(EXAMPLES))


def fuzz_settings(examples: int) -> settings:
    """Hypothesis' settings: `examples` in the suite, derandomized so that CI is repeatable;
    `CHAT_FUZZ_EXAMPLES` of them, random, in the long run."""
    return settings(
        max_examples=int(os.environ.get(EXAMPLES) or examples),
        # No shrinking: the server's state changes with every example, so a smaller one
        # may not fail again; each failure names the frame or request that caused it.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        deadline=None,
        derandomize=not long_run(),
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def report(test: str, **figures: Any) -> None:
    """Print the test's figures, and add them to the `CHAT_FUZZ_REPORT` file if one is named."""
    figures = {"test": test, "backend": backend(), **figures}
    print(json.dumps(figures))
    if path := os.environ.get(REPORT):
        with open(path, "a") as out:
            out.write(json.dumps(figures) + "\n")


def backend() -> str:
    engine = django_settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return engine + ("+redis" if os.environ.get("REDIS_URL") else "")


# --- The server --------------------------------------------------------------------------------


@contextmanager
def fuzz_server(llm_server: FakeLLM, **environment: str) -> Iterator[LiveServer]:
    """daphne on the test database, logging each line with its level."""
    with serve(llm_server, DJANGO_SETTINGS_MODULE="tests.fuzz_settings", **environment) as server:
        yield server


class ServerLog:
    """The server's log, read on from where the last look ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def assert_clean(self) -> None:
        """Nothing logged since the last look is an error, a traceback or a 5xx answer."""
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        # A line still being written is read whole next time.
        chunk = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(chunk)
        text = chunk.decode(errors="replace")
        if PROBLEM.search(text):
            raise AssertionError(f"the server logged a problem:\n{text[-20_000:]}")


def login_cookie(user: User) -> str:
    """A new session of `user`'s, as the `Cookie` header that carries it."""
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


# --- Clients ----------------------------------------------------------------------------------


class ClientLoop:
    """An event loop on a thread of its own for the tests' clients: hypothesis and
    schemathesis call a test's body synchronously, example after example, while the other
    user's chats must go on between them."""

    def __enter__(self) -> ClientLoop:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-clients")
        self.thread.start()
        return self

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run `coroutine` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


async def next_frame(socket: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame from the server, decoded; an `AssertionError` if the socket closed."""
    message = await socket.receive(timeout=FRAME_TIMEOUT)
    if message.type != aiohttp.WSMsgType.TEXT:
        raise AssertionError(f"the socket ended: {message.type.name} {message.data!r}")
    frame = json.loads(message.data)
    assert isinstance(frame, dict), frame
    return frame


class Bystanders:
    """Another user's chats, one after another on each of their conversations, each on a
    socket of its own, for as long as the fuzz runs: every one must end `complete` with the
    whole reply, its deltas in order and never far apart, no error frame and no socket
    closed."""

    def __init__(self, url: str, cookie: str, conversation_ids: list[Any]) -> None:
        self.url = url
        self.cookie = cookie
        self.conversation_ids = [str(pk) for pk in conversation_ids]
        self.completed = 0
        self.problems: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._http = aiohttp.ClientSession(headers={"Cookie": self.cookie})
        self._tasks = [asyncio.create_task(self._chat(pk)) for pk in self.conversation_ids]

    async def finish(self) -> None:
        """Let the chats in flight end, then stop."""
        if not self._tasks:
            return
        self._stopping.set()
        await asyncio.gather(*self._tasks)
        self._tasks = []
        await self._http.close()

    def assert_well(self) -> None:
        assert not self.problems, "another user's chats failed:\n" + "\n".join(self.problems)

    async def _chat(self, conversation_id: str) -> None:
        path = f"/ws/conversations/{conversation_id}/"
        try:
            async with self._http.ws_connect(
                self.url.replace("http", "ws", 1) + path, origin=self.url
            ) as socket:
                state = await next_frame(socket)
                assert state["type"] == "state", state
                while True:  # one chat at least, however short the fuzz
                    async with asyncio.timeout(BYSTANDER_CHAT_TIMEOUT):
                        await self._one_chat(socket)
                    self.completed += 1
                    if self._stopping.is_set():
                        break
        except (AssertionError, aiohttp.ClientError, TimeoutError) as failure:
            self.problems.append(f"conversation {conversation_id}: {failure!r}")

    async def _one_chat(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        await socket.send_json(
            {"type": "send", "content": "Still there?", "client_msg_id": str(uuid.uuid4())}
        )
        reply_id, deltas, gaps = None, [], [0.0]
        last = time.monotonic()
        while True:
            frame = await next_frame(socket)
            if reply_id is not None:  # not the wait to start, a turn on the ORM thread
                gaps.append(time.monotonic() - last)
            last = time.monotonic()
            assert frame["type"] != "error", frame
            if frame["type"] == "message" and frame["message"]["role"] == "assistant":
                reply_id = frame["message"]["id"]
            elif frame["type"] == "delta" and frame["message_id"] == reply_id:
                deltas.append(frame)
            elif frame["type"] == "done" and frame["message_id"] == reply_id:
                break
        whole, streamed = expected_text(BYSTANDER_REPLY.tokens), "".join(d["text"] for d in deltas)
        assert (frame["status"], frame["content"], streamed) == ("complete", whole, whole), (
            f"a reply ended {frame['status']} ({frame['error']}) with {frame['content']!r}, "
            f"streamed {streamed!r}"
        )
        seqs = [d["seq"] for d in deltas]
        assert seqs == list(range(1, len(deltas) + 1)), f"deltas out of order: {seqs}"
        assert max(gaps) < BYSTANDER_LONGEST_GAP, f"a reply stalled for {max(gaps):.1f} s"


@contextmanager
def chats_meanwhile(
    server: LiveServer, clients: ClientLoop, user: User, conversation_ids: list[Any]
) -> Iterator[Bystanders]:
    """`user`'s chats on `conversation_ids`, going on until the block ends."""
    bystanders = Bystanders(server.url, login_cookie(user), conversation_ids)
    clients.run(bystanders.start())
    try:
        yield bystanders
    finally:
        clients.run(bystanders.finish())
