"""`/healthz`: whether this process can serve, for a proxy or an orchestrator.

200 once the database answers and, when REDIS_URL is set, Redis does; 503 naming the part
that does not. Answered in front of Django (`chatsite.asgi`), so that a probe needs no
allowed host name, no session and no middleware, and costs one query and one PING.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from django.conf import settings
from django.db import connection

from chat import redis_clients
from chat.persistence import db_step

logger = logging.getLogger(__name__)

PATH = "/healthz"
# A part that takes longer than this to answer is down, as far as a probe can tell.
TIMEOUT = 2.0  # seconds

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HealthCheck:
    """Answers GET /healthz; hands every other request to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, {"status": "method not allowed"}, [(b"allow", b"GET, HEAD")])
            return
        parts = await check()
        healthy = all(state in ("ok", "off") for state in parts.values())
        body = {"status": "ok" if healthy else "unavailable", **parts}
        await _answer(send, 200 if healthy else 503, body, head=scope["method"] == "HEAD")


async def check() -> dict[str, str]:
    """Each part's state: "ok", "off" (not configured) or what went wrong."""
    database, redis = await asyncio.gather(
        _state_of(_database_answers()), _state_of(_redis_answers())
    )
    return {"database": database, "redis": redis}


async def _state_of(answering: Awaitable[bool]) -> str:
    try:
        async with asyncio.timeout(TIMEOUT):
            return "ok" if await answering else "off"
    except TimeoutError:
        return f"no answer within {TIMEOUT:g} s"
    except Exception as exc:
        logger.warning("health check failed", exc_info=True)
        return type(exc).__name__


@db_step
def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _database_answers() -> bool:
    await _select_one()
    return True


async def _redis_answers() -> bool:
    if not settings.REDIS_URL:
        return False
    redis = redis_clients.client(settings.REDIS_URL, socket_connect_timeout=TIMEOUT)
    try:
        await cast("Awaitable[bool]", redis.ping())  # redis-py types both clients' alike
    finally:
        await redis.aclose()
    return True


async def _answer(
    send: Send,
    status: int,
    body: dict[str, str],
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-store"),
                (b"content-length", str(len(content)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else content})
