"""Tabs of live daphne processes (tests/live_daphne.py): the Redis they share, and the
frames a tab's websocket receives."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import aiohttp

# Redis runs on every development and CI machine (README, "Tests").
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
FRAME_TIMEOUT = 15.0  # seconds


def tab_url(server_url: str, conversation_id: Any) -> str:
    """The websocket URL of a conversation's tab on a live server."""
    return server_url.replace("http", "ws", 1) + f"/ws/conversations/{conversation_id}/"


async def next_frame(socket: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame, decoded; an `AssertionError` if the socket closed instead."""
    message = await socket.receive(timeout=FRAME_TIMEOUT)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    frame: dict[str, Any] = json.loads(message.data)
    return frame


async def until(socket: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """The first frame of type `kind`, the frames before it skipped."""
    while (frame := await next_frame(socket))["type"] != kind:
        pass
    return frame


def send_frame(content: str) -> dict[str, Any]:
    return {"type": "send", "content": content, "client_msg_id": str(uuid.uuid4())}
