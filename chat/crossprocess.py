"""Word between the ASGI processes of one site, over the Redis channel layer: "stop the
reply of this conversation", for a reply that another process runs.

Each process has one channel, and joins the group of a conversation while it runs a
reply there: a few Redis round trips per reply, never any per token or per frame.
With one process (no REDIS_URL) every reply is local and none of this runs.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any
from uuid import UUID

from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)

STOP = "reply.stop"

_channel: str | None = None
_listener: asyncio.Task[None] | None = None


def enabled() -> bool:
    return bool(settings.REDIS_URL)


def group(conversation_id: UUID) -> str:
    return f"conversation.{conversation_id.hex}"


async def joined(conversation_id: UUID) -> None:
    """This process runs the conversation's reply: take its stops."""
    layer = get_channel_layer()
    await layer.group_add(group(conversation_id), await _own_channel())


async def left(conversation_id: UUID) -> None:
    if _channel is not None:
        await get_channel_layer().group_discard(group(conversation_id), _channel)


async def request_stop(conversation_id: UUID) -> None:
    """Ask whichever process runs the conversation's reply to stop it."""
    await get_channel_layer().group_send(
        group(conversation_id), {"type": STOP, "conversation": str(conversation_id)}
    )


async def close() -> None:
    """Stop listening (tests, shutdown)."""
    global _channel, _listener
    listener, _channel, _listener = _listener, None, None
    if listener is not None:
        listener.cancel()
        with suppress(asyncio.CancelledError):
            await listener


async def _own_channel() -> str:
    global _channel, _listener
    loop = asyncio.get_running_loop()
    if _channel is None or _listener is None or _listener.get_loop() is not loop:
        _channel = await get_channel_layer().new_channel()
        _listener = asyncio.create_task(_listen(_channel), name="crossprocess-listener")
    return _channel


async def _listen(channel: str) -> None:
    from chat import replies  # replies imports this module

    layer = get_channel_layer()
    while True:
        message: dict[str, Any] = await layer.receive(channel)
        if message.get("type") == STOP:
            reply = replies.running(UUID(message["conversation"]))
            if reply is not None:
                reply.stop()
