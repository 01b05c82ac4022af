"""Word between the ASGI processes of one site, over the Redis channel layer: "stop the
reply of this conversation", for a reply that another process runs, and "this session
has ended", for the sockets another process holds (`chat.logouts`).

Each process has one channel. It joins the group of a conversation while it runs a reply
there: a few Redis round trips per reply, never any per token or per frame. It joins
the group of all processes once it holds sockets, and again every hour, before
channels-redis lets the membership expire (a day). With one process (no REDIS_URL)
everything is local and none of this runs.
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
END_SESSION = "session.end"
# Every process that holds sockets, for logouts.
PROCESSES = "processes"
REJOIN_SECONDS = 3600

_channel: str | None = None
_listener: asyncio.Task[None] | None = None
_joined_processes_at: float | None = None


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


async def holding_sockets() -> None:
    """This process holds sockets: take word of the sessions that end."""
    global _joined_processes_at
    loop = asyncio.get_running_loop()
    if _joined_processes_at is not None and loop.time() - _joined_processes_at < REJOIN_SECONDS:
        return
    _joined_processes_at = loop.time()
    await get_channel_layer().group_add(PROCESSES, await _own_channel())


async def end_session(session_key: str) -> None:
    """Ask every process to close its sockets of a session that has ended."""
    await get_channel_layer().group_send(PROCESSES, {"type": END_SESSION, "session": session_key})


async def close() -> None:
    """Stop listening (tests, shutdown)."""
    global _channel, _listener, _joined_processes_at
    listener, _channel, _listener = _listener, None, None
    _joined_processes_at = None
    if listener is not None:
        listener.cancel()
        with suppress(asyncio.CancelledError):
            await listener


async def _own_channel() -> str:
    global _channel, _listener
    loop = asyncio.get_running_loop()
    if _channel is None or _listener is None or _listener.get_loop() is not loop:
        global _joined_processes_at
        _joined_processes_at = None  # a new channel is in no group yet
        _channel = await get_channel_layer().new_channel()
        _listener = asyncio.create_task(_listen(_channel), name="crossprocess-listener")
    return _channel


async def _listen(channel: str) -> None:
    from chat import logouts, replies  # both import this module

    layer = get_channel_layer()
    while True:
        message: dict[str, Any] = await layer.receive(channel)
        if message.get("type") == STOP:
            reply = replies.running(UUID(message["conversation"]))
            if reply is not None:
                reply.stop()
        elif message.get("type") == END_SESSION:
            logouts.end_local(message["session"])
