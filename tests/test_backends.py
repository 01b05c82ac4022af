"""The suite runs on the backends the environment names, and they really work."""

from __future__ import annotations

import os

import pytest
from channels.layers import channel_layers
from django.db import connection


def test_database_is_the_one_configured():
    expected = (
        "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    )
    assert connection.vendor == expected


async def test_channel_layer_is_the_one_configured_and_delivers():
    # A layer of its own: the process's one may be held by another test's event loop.
    layer = channel_layers.make_backend("default")
    expected = "RedisChannelLayer" if os.environ.get("REDIS_URL") else "InMemoryChannelLayer"
    assert type(layer).__name__ == expected
    channel = await layer.new_channel()
    await layer.group_add("backend-check", channel)
    await layer.group_send("backend-check", {"type": "check.message", "text": "hello"})
    assert (await layer.receive(channel))["text"] == "hello"
    await layer.group_discard("backend-check", channel)
    # No `flush()`: channels-redis would close the pools of every event loop it has seen,
    # from this one; each loop's pool closes with its loop.


@pytest.mark.django_db
def test_database_is_set_up_for_concurrent_async_use():
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
    else:
        assert connection.settings_dict["CONN_MAX_AGE"] == 0
        assert getattr(connection, "pool", None) is not None
