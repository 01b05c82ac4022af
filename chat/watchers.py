"""Who watches which conversation in this process, and sending them frames.

Frames go straight to the local sockets and SSE streams, encoded once for all of them.
With several processes (REDIS_URL), each frame is also published once for the other
processes' watchers of the conversation, and what they publish is passed on here
(`chat.fanout`).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

if TYPE_CHECKING:
    from chat.fanout import FanOut

logger = logging.getLogger(__name__)

Frame = dict[str, Any]


class Watcher(Protocol):
    async def deliver(self, frame: Frame, text: str) -> None:
        """Send one frame, given both as an object and as its JSON text."""


class Watchers:
    """The watchers of each conversation in this process."""

    def __init__(self) -> None:
        self._by_conversation: dict[UUID, set[Watcher]] = {}
        # The other processes' watchers, when there are other processes.
        self.fanout: FanOut | None = None

    def watch(self, conversation_id: UUID, watcher: Watcher) -> None:
        watchers = self._by_conversation.get(conversation_id)
        if watchers is None:
            watchers = self._by_conversation[conversation_id] = set()
            if self.fanout is not None:
                self.fanout.watch(conversation_id)
        watchers.add(watcher)

    def unwatch(self, conversation_id: UUID, watcher: Watcher) -> None:
        watchers = self._by_conversation.get(conversation_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._by_conversation[conversation_id]
                if self.fanout is not None:
                    self.fanout.unwatch(conversation_id)

    async def broadcast(self, conversation_id: UUID, frame: Frame) -> None:
        """Send a frame to everyone watching the conversation, on every process."""
        if self.fanout is None and conversation_id not in self._by_conversation:
            return
        text = json.dumps(frame)
        await self.deliver_local(conversation_id, frame, text)
        if self.fanout is not None:
            self.fanout.publish(conversation_id, text, delta=frame["type"] == "delta")

    async def deliver_local(self, conversation_id: UUID, frame: Frame, text: str) -> None:
        """Send a frame to this process's watchers; one broken socket spoils none."""
        watchers = self._by_conversation.get(conversation_id)
        if not watchers:
            return
        for watcher in tuple(watchers):
            try:
                await watcher.deliver(frame, text)
            except Exception:
                # A socket that went away mid-send: it unwatches itself on disconnect.
                logger.debug("dropping a frame for a closed socket", exc_info=True)


class Held:
    """A watcher that starts watching before its `state` is read, so that nothing sent
    meanwhile is missed: frames are held until `release`, then passed on, less the deltas
    that the state already holds."""

    __slots__ = ("_held", "watcher")

    def __init__(self, watcher: Watcher, *, hold: bool = True) -> None:
        self.watcher = watcher
        self._held: list[tuple[Frame, str]] | None = [] if hold else None

    async def deliver(self, frame: Frame, text: str) -> None:
        if self._held is not None:
            self._held.append((frame, text))
        else:
            await self.watcher.deliver(frame, text)

    async def release(self, streaming: Frame | None) -> None:
        """Pass on what was held; `streaming` is the state's snapshot of the running reply."""
        held, self._held = self._held or [], None
        for frame, text in held:
            if streaming is None or not _already_in(frame, streaming):
                await self.watcher.deliver(frame, text)


def _already_in(frame: Frame, streaming: Frame) -> bool:
    """A delta the `state` snapshot already holds."""
    return (
        frame.get("type") == "delta"
        and frame["message_id"] == streaming["message_id"]
        and frame["seq"] <= streaming["seq"]
    )
