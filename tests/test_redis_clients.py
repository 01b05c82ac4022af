"""Every Redis pool of the site is told who redis-py is (chat.redis_clients), so that
opening a connection looks nothing up in the installed packages' metadata."""

from __future__ import annotations

import os

import pytest
from channels.layers import channel_layers
from django.core.cache import caches

from chat import redis_clients
from tests.live_tabs import REDIS_URL

needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="REDIS_URL unset")


async def test_the_service_clients_are_told():
    client = redis_clients.client(REDIS_URL)
    try:
        assert client.connection_pool.connection_kwargs["driver_info"] is redis_clients.DRIVER_INFO
    finally:
        await client.aclose()


@needs_redis
async def test_the_channel_layer_is_told():
    layer = channel_layers.make_backend("default")
    pool = layer.connection(0).connection_pool
    assert pool.connection_kwargs["driver_info"] is redis_clients.DRIVER_INFO


@needs_redis
def test_the_session_cache_is_told():
    pool = caches["default"]._cache.get_client().connection_pool  # type: ignore[attr-defined]
    assert pool.connection_kwargs["driver_info"] is redis_clients.DRIVER_INFO


def test_opening_a_connection_looks_nothing_up(monkeypatch):
    """What the telling saves: a connection opened as the site's pools open them does not
    read the package metadata (redis-py's own lookup, counted)."""
    import redis.asyncio.connection
    from redis import utils

    looked_up: list[str] = []
    real = utils.get_lib_version

    def counted() -> str:
        looked_up.append(real())
        return looked_up[-1]

    monkeypatch.setattr(utils, "get_lib_version", counted)
    redis.asyncio.connection.Connection()  # as redis-py opens one untold
    assert len(looked_up) == 1
    pool = redis_clients.client(REDIS_URL).connection_pool
    pool.make_connection()
    assert len(looked_up) == 1
