"""The benchmark's SSE clients: each chat's reply streamed as server-sent events.

A chat is a conversation made through the JSON API on an HTTP connection of its own, kept
open (as a page's would be) for the `POST .../messages/` with `Accept: text/event-stream`
that sends the message and streams its reply. The events carry the websocket's frames, so
a reply is read and checked as `bench.chats` reads one from a socket.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import aiohttp

from bench.chats import CONNECT_CONCURRENCY, Project, Reply, bounded, finish, take_frame


@dataclass
class StreamChat:
    """A conversation whose reply will stream over SSE, and its own HTTP connection."""

    http: aiohttp.ClientSession
    conversation_id: str
    user: int


async def new_chat(target: Project, user: int) -> StreamChat:
    """A conversation made on a new connection, which stays open for the message."""
    connector = aiohttp.TCPConnector(limit=1)
    http = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    try:
        endpoint = await target.new_chat(http, user)
    except BaseException:
        await http.close()
        raise
    assert endpoint.conversation_id is not None
    return StreamChat(http, endpoint.conversation_id, user)


async def new_chats(target: Project, users: Iterable[int]) -> list[StreamChat | Exception]:
    return await bounded([partial(new_chat, target, user) for user in users], CONNECT_CONCURRENCY)


async def close_all(chats: Sequence[StreamChat]) -> None:
    await asyncio.gather(*(chat.http.close() for chat in chats))


async def stream_reply(
    chat: StreamChat,
    target: Project,
    content: str,
    timeout: float,  # noqa: ASYNC109 - a late reply is recorded as its error, not raised
) -> Reply:
    """Send a message and read its events until `done`, an error or `timeout`."""
    reply = Reply(chat.conversation_id)
    url = f"{target.base_url}/api/conversations/{chat.conversation_id}/messages/"
    headers = {**target.api_headers(chat.user), "Accept": "text/event-stream"}
    body = json.dumps({"content": content, "client_msg_id": str(uuid.uuid4())})
    reply.sent_at = time.perf_counter()
    try:
        async with (
            asyncio.timeout(timeout),
            chat.http.post(url, data=body, headers=headers) as response,
        ):
            if response.status != 200:
                reply.error = f"HTTP {response.status}: {(await response.text())[:200]}"
            else:
                await read_events(response, reply)
    except TimeoutError:
        reply.error = f"no done within {timeout:.0f} s"
    except aiohttp.ClientError as exc:
        reply.error = f"request failed: {exc!r}"
    return finish(reply)


async def read_events(response: aiohttp.ClientResponse, reply: Reply) -> None:
    """Take each event's frame (its `data:` line) as it completes, until `done`."""
    data: str | None = None
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data = line[5:].strip()
            continue
        if line or data is None:
            continue  # `event:`, `id:`, a keep-alive comment, or a blank line after one
        take_frame(reply, json.loads(data), time.perf_counter())
        data = None
        if reply.status is not None or reply.error is not None:
            return
    reply.error = "stream ended before done"


async def chat_at_once(
    chats: Sequence[StreamChat],
    target: Project,
    timeout: float,  # noqa: ASYNC109 - each reader's own (stream_reply)
) -> tuple[float, list[Reply]]:
    """Every chat posts its message at once; the wall time until the last `done`."""
    started = time.perf_counter()
    replies = await asyncio.gather(
        *(stream_reply(chat, target, f"Hello {i}", timeout) for i, chat in enumerate(chats))
    )
    ended = max((r.sent_at + r.done_at for r in replies if r.done_at is not None), default=started)
    return ended - started, list(replies)
