"""The benchmark's clients: real websockets on 127.0.0.1, each reply timed frame by frame
(`bench.event_streams` reads the same replies over SSE).

A target is where chats go: the project (a logged-in user per chat, a conversation made
through the JSON API, `state` on connect) or the reference relay (a bare socket).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import aiohttp

T = TypeVar("T")
Socket = aiohttp.ClientWebSocketResponse
# Connections opened at once: daphne (Twisted) listens with a backlog of 50.
CONNECT_CONCURRENCY = 32
CONNECT_TIMEOUT = 30.0


@dataclass
class Endpoint:
    """A websocket to open: where, with which headers, and what it belongs to."""

    url: str
    headers: dict[str, str]
    conversation_id: str | None = None
    expects_state: bool = False


class Target(Protocol):
    creates_conversations: bool

    async def new_chat(self, http: aiohttp.ClientSession, user: int) -> Endpoint:
        """Everything a new chat needs before its socket opens."""
        ...


class Project:
    """The project: user `i` logs in with session `i`; a chat is a new conversation."""

    creates_conversations = True

    def __init__(self, base_url: str, cookie_name: str, sessions: Sequence[str]) -> None:
        self.base_url = base_url
        self.cookie_name = cookie_name
        self.sessions = sessions
        # Any well-formed token works: Django compares the cookie with the header.
        self.csrf_token = secrets.token_hex(16)

    def cookies(self, user: int) -> str:
        return f"{self.cookie_name}={self.sessions[user]}; csrftoken={self.csrf_token}"

    def api_headers(self, user: int) -> dict[str, str]:
        """What user `i`'s page sends with a JSON request that changes something."""
        return {
            "Cookie": self.cookies(user),
            "Origin": self.base_url,
            "X-CSRFToken": self.csrf_token,
            "Content-Type": "application/json",
        }

    async def new_chat(self, http: aiohttp.ClientSession, user: int) -> Endpoint:
        url = f"{self.base_url}/api/conversations/"
        async with http.post(url, data="{}", headers=self.api_headers(user)) as response:
            if response.status != 201:
                detail = await response.text()
                raise RuntimeError(f"creating a conversation: {response.status} {detail}")
            conversation_id = str((await response.json())["id"])
        return self.endpoint(conversation_id, user)

    def endpoint(self, conversation_id: str, user: int) -> Endpoint:
        url = f"{self.base_url.replace('http', 'ws', 1)}/ws/conversations/{conversation_id}/"
        headers = {"Cookie": self.cookies(user), "Origin": self.base_url}
        return Endpoint(url, headers, conversation_id, expects_state=True)


class Reference:
    """The reference relay: any socket is a chat."""

    creates_conversations = False

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def new_chat(self, http: aiohttp.ClientSession, user: int) -> Endpoint:
        url = f"{self.base_url.replace('http', 'ws', 1)}/ws/relay/"
        return Endpoint(url, {"Origin": self.base_url})


# --- Sockets ------------------------------------------------------------------------------


@dataclass
class Chat:
    endpoint: Endpoint
    socket: Socket


async def open_socket(http: aiohttp.ClientSession, endpoint: Endpoint) -> Chat:
    """Connect; for the project, read `state` too, as a page does before it shows anything."""
    async with asyncio.timeout(CONNECT_TIMEOUT):
        socket = await http.ws_connect(endpoint.url, headers=endpoint.headers)
        if endpoint.expects_state:
            message = await socket.receive()
            text = message.data if message.type == aiohttp.WSMsgType.TEXT else "{}"
            if json.loads(text).get("type") != "state":
                await socket.close()
                raise RuntimeError(f"expected state, got {message.type.name} {message.data!r}")
    return Chat(endpoint, socket)


async def bounded(jobs: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T | Exception]:
    """Run the jobs, at most `limit` at a time; a failure is returned, not raised."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T | Exception:
        async with gate:
            try:
                return await job()
            except Exception as exc:
                return exc

    return await asyncio.gather(*(one(job) for job in jobs))


async def new_chats(
    http: aiohttp.ClientSession, target: Target, users: Iterable[int]
) -> list[Endpoint | Exception]:
    """A new chat per user, not yet connected (for the project: a conversation made)."""
    return await bounded(
        [partial(target.new_chat, http, user) for user in users], CONNECT_CONCURRENCY
    )


async def connect(
    http: aiohttp.ClientSession, endpoints: Iterable[Endpoint]
) -> list[Chat | Exception]:
    return await bounded(
        [partial(open_socket, http, endpoint) for endpoint in endpoints], CONNECT_CONCURRENCY
    )


async def set_up(
    http: aiohttp.ClientSession, target: Target, users: Iterable[int]
) -> list[Chat | Exception]:
    """A new chat per user, its socket open."""
    made = await new_chats(http, target, users)
    opened = await connect(http, [e for e in made if isinstance(e, Endpoint)])
    failed: list[Chat | Exception] = [e for e in made if isinstance(e, Exception)]
    return failed + opened


async def close_all(chats: Sequence[Chat]) -> None:
    async def close(chat: Chat) -> None:
        async with asyncio.timeout(5):
            await chat.socket.close()

    await bounded([partial(close, chat) for chat in chats], 100)


# --- Replies ------------------------------------------------------------------------------


@dataclass
class Reply:
    """What one chat saw of its reply, with times in seconds from its send."""

    conversation_id: str | None
    sent_at: float = 0.0  # perf_counter() at the send
    first_delta: float | None = None
    done_at: float | None = None
    largest_gap: float = 0.0
    deltas: int = 0
    text: str = ""
    status: str | None = None
    error: str | None = None
    _parts: list[str] = field(default_factory=list, repr=False)
    # The last frame's arrival, from the first delta on.
    _last: float | None = field(default=None, repr=False)


def finish(reply: Reply) -> Reply:
    """The reply's text joined, its times made relative to its send."""
    reply.text = "".join(reply._parts)
    if reply.first_delta is not None:
        reply.first_delta -= reply.sent_at
    if reply.done_at is not None:
        reply.done_at -= reply.sent_at
    return reply


async def read_reply(
    chat: Chat,
    sent: asyncio.Future[float],
    timeout: float,  # noqa: ASYNC109 - a late reply is recorded as its error, not raised
) -> Reply:
    """Read frames until `done`, an error frame, a closed socket or `timeout`.

    The timeout is the reader's own, not an `asyncio.timeout` around the call: a reply that
    runs out of time is a result to report beside the others, not an error for the caller.
    """
    reply = Reply(chat.endpoint.conversation_id)
    try:
        async with asyncio.timeout(timeout):
            while reply.status is None and reply.error is None:
                message = await chat.socket.receive()
                now = time.perf_counter()
                if message.type != aiohttp.WSMsgType.TEXT:
                    # A close carries its code (and reason), an error its exception.
                    details = f" {message.data!r} {message.extra!r}" if message.data else ""
                    reply.error = f"socket {message.type.name.lower()} before done{details}"
                    break
                take_frame(reply, json.loads(message.data), now)
    except TimeoutError:
        reply.error = f"no done within {timeout:.0f} s"
    reply.sent_at = await sent
    return finish(reply)


def take_frame(reply: Reply, frame: dict[str, Any], now: float) -> None:
    """One frame of a reply, arrived at `now` (perf_counter), timed and checked: deltas
    in order, `done` holding all their text."""
    if frame["type"] == "delta" and reply.first_delta is None:
        reply.first_delta = now
    if reply._last is not None:
        reply.largest_gap = max(reply.largest_gap, now - reply._last)
    if reply.first_delta is not None:
        reply._last = now
    kind = frame["type"]
    if kind == "delta":
        reply.deltas += 1
        if frame["seq"] != reply.deltas:
            reply.error = f"delta seq {frame['seq']} after {reply.deltas - 1}"
        reply._parts.append(frame["text"])
    elif kind == "done":
        reply.done_at = now
        reply.status = frame["status"]
        if frame["content"] != "".join(reply._parts):
            reply.error = "done's content differs from the deltas"
    elif kind == "error":
        reply.error = f"error frame: {frame.get('code')}"


async def chat_at_once(
    chats: Sequence[Chat],
    timeout: float,  # noqa: ASYNC109 - each reader's own (read_reply)
) -> tuple[float, list[Reply]]:
    """Every chat sends one message at the same instant; the wall time until the last `done`.

    The readers wait before anything is sent, so that each frame is timed as it arrives.
    """
    loop = asyncio.get_running_loop()
    sent = [loop.create_future() for _ in chats]
    readers = [
        asyncio.create_task(read_reply(chat, at, timeout))
        for chat, at in zip(chats, sent, strict=True)
    ]
    await asyncio.sleep(0)  # every reader is now waiting on its socket
    started = time.perf_counter()
    for i, (chat, at) in enumerate(zip(chats, sent, strict=True)):
        frame = {"type": "send", "content": f"Hello {i}", "client_msg_id": str(uuid.uuid4())}
        at.set_result(time.perf_counter())
        try:
            await chat.socket.send_str(json.dumps(frame))
        except ConnectionError as exc:
            readers[i].cancel()
            readers[i] = asyncio.create_task(_failed(chat, f"send failed: {exc}"))
    replies = await asyncio.gather(*readers)
    ended = max((r.sent_at + r.done_at for r in replies if r.done_at is not None), default=started)
    return ended - started, list(replies)


async def _failed(chat: Chat, error: str) -> Reply:
    return Reply(chat.endpoint.conversation_id, error=error)


# --- A reply watched from another tab ----------------------------------------------------


@dataclass
class Watched(Reply):
    """A reply as the watching tab saw it: its deltas checked against the last seq shown."""

    seq: int = 0
    lost: int = 0
    repeated: int = 0
    fresh_states: int = 0


def take_watched(reply: Watched, frame: dict[str, Any], now: float) -> None:
    """One frame on the watching tab: a `state` replaces what was shown, each delta must
    follow the last seq shown, `done` must hold all the text shown."""
    kind = frame["type"]
    if kind == "state":
        reply.fresh_states += 1
        streaming = frame.get("streaming")
        if streaming:
            reply._parts = [streaming["content"]]
            reply.seq = streaming["seq"]
        return
    if kind == "delta":
        seq = frame["seq"]
        if seq <= reply.seq:
            reply.repeated += 1
            return
        reply.lost += seq - reply.seq - 1
        reply.seq = seq
        if reply.first_delta is None:
            reply.first_delta = now
        reply.deltas += 1
        reply._parts.append(frame["text"])
    if reply._last is not None:
        reply.largest_gap = max(reply.largest_gap, now - reply._last)
    if reply.first_delta is not None:
        reply._last = now
    if kind == "done":
        reply.done_at = now
        reply.status = frame["status"]
        if frame["content"] != "".join(reply._parts):
            reply.error = "done's content differs from what the tab showed"
    elif kind == "error":
        reply.error = f"error frame: {frame.get('code')}"


async def watch_reply(
    chat: Chat,
    sent: asyncio.Future[float],
    timeout: float,  # noqa: ASYNC109 - a late reply is recorded as its error, as in read_reply
) -> Watched:
    reply = Watched(chat.endpoint.conversation_id)
    try:
        async with asyncio.timeout(timeout):
            while reply.status is None and reply.error is None:
                message = await chat.socket.receive()
                now = time.perf_counter()
                if message.type != aiohttp.WSMsgType.TEXT:
                    reply.error = f"socket {message.type.name.lower()} before done"
                    break
                take_watched(reply, json.loads(message.data), now)
    except TimeoutError:
        reply.error = f"no done within {timeout:.0f} s"
    reply.sent_at = await sent
    finish(reply)
    return reply
