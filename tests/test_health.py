"""`/healthz` (chat.health): 200 when the database and Redis (when set) answer, 503 naming
the part that does not; answered in front of Django, whatever the Host."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from channels.testing import HttpCommunicator

from chatsite.asgi import application
from tests.live_daphne import serve
from tests.live_tabs import REDIS_URL

pytestmark = pytest.mark.django_db(transaction=True)


async def probe(method: str = "GET", host: bytes = b"testserver") -> tuple[int, Any]:
    communicator = HttpCommunicator(application, method, "/healthz", headers=[(b"host", host)])
    response = await communicator.get_response(10)
    body = json.loads(response["body"]) if response["body"] else None
    return response["status"], body


async def test_healthy_without_redis(settings):
    settings.REDIS_URL = ""
    assert await probe() == (200, {"status": "ok", "database": "ok", "redis": "off"})


async def test_healthy_with_redis(settings):
    settings.REDIS_URL = REDIS_URL
    assert await probe() == (200, {"status": "ok", "database": "ok", "redis": "ok"})


async def test_any_host_may_ask(settings):
    """An orchestrator probes by address, which ALLOWED_HOSTS does not list."""
    settings.REDIS_URL = ""
    status, _ = await probe(host=b"10.1.2.3:8000")
    assert status == 200


async def test_redis_that_does_not_answer_is_503(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    status, body = await probe()
    assert status == 503
    assert body["status"] == "unavailable" and body["database"] == "ok"
    assert body["redis"] == "ConnectionError"


async def test_only_get_and_head(settings):
    settings.REDIS_URL = ""
    assert (await probe("POST"))[0] == 405
    assert await probe("HEAD") == (200, None)


async def test_a_server_whose_database_does_not_answer_is_503(llm_server):
    """A real server, its database somewhere nothing listens."""
    broken = {"DATABASE_URL": "postgres://postgres@127.0.0.1:1/nothing", "REDIS_URL": ""}
    with serve(llm_server, **broken) as server:
        async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as response:
            body = await response.json()
    assert response.status == 503
    # Refused at once, or waited for by the connection pool past the probe's patience.
    assert body["database"] in ("OperationalError", "no answer within 2 s")
    assert body["redis"] == "off"
