"""Sockets per user counted over every process (`chat.socket_counts`): two counters on one
Redis stand for two processes; a process that dies stops counting once its key expires.
Redis runs on every development and CI machine (README, "Tests")."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from chat import socket_counts
from chat.socket_counts import SocketCounts
from tests.live_tabs import REDIS_URL


@pytest.fixture
def cap(settings) -> int:
    settings.CHAT_SOCKETS_PER_USER = 3
    return 3


@pytest.fixture
def user_id() -> int:
    """A user id no other test run counts (the keys live in a shared Redis)."""
    return uuid.uuid4().int % 10**12


@pytest.fixture
async def processes(cap: int) -> AsyncIterator[tuple[SocketCounts, SocketCounts]]:
    one, two = SocketCounts(REDIS_URL), SocketCounts(REDIS_URL)
    yield one, two
    await one.close()
    await two.close()


async def test_the_cap_holds_over_processes(processes, user_id):
    one, two = processes

    assert [await one.take(user_id), await one.take(user_id), await two.take(user_id)] == [
        True,
        True,
        True,
    ]
    assert not await one.take(user_id)
    assert not await two.take(user_id)

    one.release(user_id)
    await one._shared._flushing
    assert await two.take(user_id)
    assert not await one.take(user_id)


async def test_other_users_are_counted_apart(processes, user_id):
    one, two = processes
    for _ in range(3):
        assert await one.take(user_id)
    assert await two.take(user_id + 1)


async def test_a_process_that_dies_stops_counting_when_its_key_expires(processes, user_id):
    one, two = processes
    for _ in range(3):
        assert await one.take(user_id)
    assert not await two.take(user_id)

    # As if `one` were killed: it renews its key no more, and the key expires.
    one._shared.keep_alive(False)
    redis = Redis.from_url(REDIS_URL)
    await redis.delete(one._shared.process_key)
    await redis.aclose()

    assert await two.take(user_id)


async def test_a_process_that_closes_stops_counting_at_once(processes, user_id):
    one, two = processes
    for _ in range(3):
        assert await one.take(user_id)

    await one.close()

    assert await two.take(user_id)


async def test_the_key_of_a_process_with_sockets_expires_unless_renewed(processes, user_id):
    one, _ = processes
    assert await one.take(user_id)
    redis = Redis.from_url(REDIS_URL)
    ttl = await redis.ttl(one._shared.process_key)
    await redis.aclose()
    assert 0 < ttl <= socket_counts.PROCESS_TTL


async def test_without_redis_the_socket_opens_uncounted(cap, user_id, caplog):
    counts = SocketCounts("redis://127.0.0.1:1/0")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="chat.socket_counts"):
        assert await counts.take(user_id)
    await counts.close()
    assert "counting a socket in Redis failed" in caplog.text


async def test_one_process_counts_in_memory(cap, user_id):
    counts = SocketCounts("")
    assert [await counts.take(user_id) for _ in range(4)] == [True, True, True, False]
    counts.release(user_id)
    assert await counts.take(user_id)
