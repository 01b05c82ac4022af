"""Per-user limits hold over processes: two daphne processes on one database count a
user's replies in turn (the user's row locked in the transaction that counts and stores
them, `chat.limits`), so a burst of sends spread over both cannot start more than the cap.

On PostgreSQL the test makes the two processes' transactions meet: a trigger holds the
burst's INSERTs at a gate (an advisory lock the test holds) until both processes are in
their transactions. Without the row lock both count the same running replies and each
starts one more. SQLite's writing transactions take turns anyway (`BEGIN IMMEDIATE`,
chatsite/settings.py); there the burst runs ungated.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from chat.models import Message
from tests.api_client import atoken_headers, url
from tests.live_daphne import serve
from tests.live_tabs import REDIS_URL
from tests.llm_server import Behaviour
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

RUNNING = 2  # CHAT_REPLIES_RUNNING_PER_USER
SENDS = 12
FIRST, BURST = "First", "Hello"  # what the sends say: the burst's wait at the gate
GATE = 4242  # the advisory lock's key


# --- The gate: the burst's messages held at their INSERT (PostgreSQL) ----------------------


def gated() -> bool:
    return connection.vendor == "postgresql"


@sync_to_async
def close_gate() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION wait_at_gate() RETURNS trigger AS $$ BEGIN "
            f"PERFORM pg_advisory_xact_lock_shared({GATE}); RETURN NEW; END $$ "
            "LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER gate BEFORE INSERT ON chat_message FOR EACH ROW "
            f"WHEN (NEW.content = '{BURST}') EXECUTE FUNCTION wait_at_gate()"
        )
        cursor.execute("SELECT pg_advisory_lock(%s)", [GATE])


@sync_to_async
def open_gate() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock_all()")


@sync_to_async
def remove_gate() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock_all()")
        cursor.execute("DROP TRIGGER IF EXISTS gate ON chat_message")


async def both_processes_wait() -> bool:
    """Whether two of the servers' transactions wait for a lock: the gate, or the user's
    row (the second process, with the row lock)."""

    @sync_to_async
    def waiting() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            (count,) = cursor.fetchone()
        return int(count)

    return await waiting() >= 2


# --- The test ---------------------------------------------------------------------------------


async def test_replies_running_per_user_are_capped_over_processes(
    llm_server, user, make_conversation
):
    """With one reply running, sends fired at once, each to its own conversation, half to
    each process: one more reply starts, every other send is refused with 429
    `rate_limited`. (A send without `Accept: text/event-stream` is answered once its
    reply is saved.)"""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=150, token_delay=0.02)
    conversations = [await sync_to_async(make_conversation)(user) for _ in range(SENDS + 1)]
    environment = {"REDIS_URL": REDIS_URL, "CHAT_REPLIES_RUNNING_PER_USER": str(RUNNING)}
    with serve(llm_server, **environment) as one, serve(llm_server, **environment) as two:
        async with aiohttp.ClientSession(headers=await atoken_headers(user)) as http:

            async def send(server: Any, conversation: Any, content: str) -> tuple[int, Any]:
                path = server.url + url(conversation, "messages")
                async with http.post(path, json={"content": content}) as response:
                    return response.status, await response.json()

            first = asyncio.create_task(send(one, conversations[0], FIRST))
            async with asyncio.timeout(10):
                await wait_until(lambda: llm_server.active_streams == 1)
            if gated():
                await close_gate()
            try:
                burst = [
                    asyncio.create_task(send((one, two)[i % 2], conversation, BURST))
                    for i, conversation in enumerate(conversations[1:])
                ]
                if gated():
                    async with asyncio.timeout(10):
                        await wait_until(both_processes_wait)
                    await open_gate()
                answers = await asyncio.gather(*burst)
            finally:
                if gated():
                    await remove_gate()
            assert (await first)[0] == 201

    assert sorted(status for status, _ in answers) == [201] * (RUNNING - 1) + [429] * (
        SENDS - RUNNING + 1
    )
    refusals = [body["error"]["code"] for status, body in answers if status == 429]
    assert set(refusals) == {"rate_limited"}
    # Only two replies ever reached the model, so no more than two ran at once.
    assert [r["messages"][-1]["content"] for r in llm_server.requests] == [FIRST, BURST]
    started = Message.objects.filter(conversation__owner=user, role="assistant")
    assert [m.status async for m in started] == ["complete"] * RUNNING
