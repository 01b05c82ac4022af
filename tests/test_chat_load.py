"""Chats never wait for each other, and a reply costs a few writes, not one per token."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from chat.models import Conversation
from tests.chat_socket import ChatSocket
from tests.llm_server import Behaviour, expected_text

pytestmark = pytest.mark.django_db(transaction=True)


async def chat_once(socket: ChatSocket, content: str) -> dict[str, Any]:
    await socket.send(type="send", content=content, client_msg_id=str(uuid.uuid4()))
    return (await socket.receive_until("done"))[-1]


async def test_fifty_chats_at_once_take_about_as_long_as_one(llm, user, login_cookie):
    """50 replies of about 1 s each: a blocked event loop would take 50 s."""
    llm.behaviour = Behaviour(tokens=20, token_delay=0.05)
    conversations = await sync_to_async(Conversation.objects.bulk_create)(
        [Conversation(owner=user, model="test-model") for _ in range(51)]
    )
    cookie = await login_cookie(user)
    sockets = [ChatSocket(c.id, cookie=cookie, frame_timeout=30) for c in conversations]
    await asyncio.gather(*(socket.connect() for socket in sockets))
    try:
        started = time.monotonic()
        alone = await chat_once(sockets[0], "alone")
        one_chat = time.monotonic() - started

        started = time.monotonic()
        async with recording_queries() as queries:
            done = await asyncio.gather(
                *(chat_once(s, f"chat {i}") for i, s in enumerate(sockets[1:]))
            )
        fifty_chats = time.monotonic() - started
    finally:
        await asyncio.gather(*(socket.close() for socket in sockets))

    inserts = [q for q in queries if q.startswith('INSERT INTO "chat_message"')]
    print(f"one chat {one_chat:.2f} s, fifty at once {fifty_chats:.2f} s")
    print(f"{len(queries)} statements for 50 replies, {len(inserts)} of them inserting messages")
    assert alone["content"] == expected_text(20)
    assert [d["status"] for d in done] == ["complete"] * 50
    assert all(d["content"] == expected_text(20) for d in done)
    assert fifty_chats < 10 * max(one_chat, 1.0)
    # Sends that arrive together are stored together (`chat.batching`), not one by one.
    assert 1 <= len(inserts) <= 12


@contextlib.asynccontextmanager
async def recording_queries() -> AsyncIterator[list[str]]:
    """Every SQL statement run meanwhile, recorded on the ORM thread where they all run."""
    queries: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries.append(sql)
        return execute(sql, params, many, context)

    # `connection` is per thread: reach it from the ORM thread itself.
    await sync_to_async(lambda: connection.execute_wrappers.append(record))()
    try:
        yield queries
    finally:
        await sync_to_async(lambda: connection.execute_wrappers.remove(record))()


async def count_queries_of_one_reply(socket: ChatSocket) -> tuple[list[str], float]:
    """Every SQL statement of one reply."""
    async with recording_queries() as queries:
        started = time.monotonic()
        done = await chat_once(socket, "Write at length")
        elapsed = time.monotonic() - started
    assert done["status"] == "complete"
    return queries, elapsed


def writes(queries: list[str]) -> list[str]:
    return [q for q in queries if q.split()[0].upper() in {"INSERT", "UPDATE", "DELETE"}]


async def test_reply_writes_do_not_grow_with_tokens(llm, user, conversation, login_cookie):
    socket = ChatSocket(conversation.id, cookie=await login_cookie(user), frame_timeout=30)
    await socket.connect()
    try:
        llm.behaviour = Behaviour(tokens=50)
        short, _ = await count_queries_of_one_reply(socket)
        llm.behaviour = Behaviour(tokens=500)
        long, _ = await count_queries_of_one_reply(socket)
        # 500 tokens streamed in well under a second: no checkpoint, the same writes as 50.
        llm.behaviour = Behaviour(tokens=500, token_delay=0.005)
        slow, elapsed = await count_queries_of_one_reply(socket)
    finally:
        await socket.close()

    print(f"queries per reply: {len(short)} (50 tokens), {len(long)} (500 tokens), ")
    print(f"{len(slow)} (500 tokens over {elapsed:.1f} s); writes {len(writes(slow))}")
    assert len(writes(long)) == len(writes(short)) <= 5
    assert len(long) == len(short) <= 15
    # Streaming for a few seconds adds about one checkpoint a second, never one per token.
    checkpoints = len(writes(slow)) - len(writes(short))
    assert 1 <= checkpoints <= elapsed + 1
