"""Who watches which conversation in this process, and sending them frames.

Frames go straight to the local sockets, encoded once for all of them: per-token traffic
never touches the channel layer (one Redis hop costs more than a whole frame, DESIGN.md 5).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol
from uuid import UUID

logger = logging.getLogger(__name__)

Frame = dict[str, Any]


class Watcher(Protocol):
    async def deliver(self, frame: Frame, text: str) -> None:
        """Send one frame, given both as an object and as its JSON text."""


_watchers: dict[UUID, set[Watcher]] = {}


def watch(conversation_id: UUID, watcher: Watcher) -> None:
    _watchers.setdefault(conversation_id, set()).add(watcher)


def unwatch(conversation_id: UUID, watcher: Watcher) -> None:
    watchers = _watchers.get(conversation_id)
    if watchers is not None:
        watchers.discard(watcher)
        if not watchers:
            del _watchers[conversation_id]


async def broadcast(conversation_id: UUID, frame: Frame) -> None:
    """Send a frame to every socket watching the conversation; one broken socket spoils none."""
    watchers = _watchers.get(conversation_id)
    if not watchers:
        return
    text = json.dumps(frame)
    for watcher in tuple(watchers):
        try:
            await watcher.deliver(frame, text)
        except Exception:
            # A socket that went away mid-send: it unwatches itself on disconnect.
            logger.debug("dropping a frame for a closed socket", exc_info=True)
