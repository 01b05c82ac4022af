"""The pace of every reply in this process: one task that, every CHAT_FRAME_INTERVAL,
sends each reply's new text as one frame, and every CHAT_CHECKPOINT_INTERVAL saves the
partial texts of all streaming replies in one database step.

One clock for all replies, instead of a timer and a save per reply: with hundreds of
replies streaming, per-reply timers and per-reply saves were a large part of the work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress

from django.conf import settings

from chat import metrics

logger = logging.getLogger(__name__)


class Clock:
    """Calls `tick` every frame interval while it returns True (replies are running), and
    `checkpoint` every checkpoint interval, beside the ticks and one at a time."""

    def __init__(
        self, tick: Callable[[], Awaitable[bool]], checkpoint: Callable[[], Awaitable[None]]
    ) -> None:
        self._tick, self._checkpoint = tick, checkpoint
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        """Start the clock if it is not running; it stops by itself when no reply is left."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._beat(), name="reply-clock")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        next_checkpoint = next_tick + settings.CHAT_CHECKPOINT_INTERVAL
        saving: asyncio.Task[None] | None = None
        try:
            while await self._tick():
                # The save runs beside the frames: the ORM thread may be busy for a while
                # (a crowd of sends), and frames must not wait for it.
                if loop.time() >= next_checkpoint and (saving is None or saving.done()):
                    next_checkpoint = loop.time() + settings.CHAT_CHECKPOINT_INTERVAL
                    saving = asyncio.create_task(self._save())
                # Ticks on a fixed schedule, so the time a pass takes does not stretch the
                # gaps; a pass that overran starts the next one at once.
                next_tick = max(next_tick + settings.CHAT_FRAME_INTERVAL, loop.time())
                await asyncio.sleep(next_tick - loop.time())
                # However late the wake-up, other work held the event loop that long.
                metrics.LOOP_LAG.observe(max(loop.time() - next_tick, 0.0))
        finally:
            # From here on a new reply must start a new clock, not count on this one.
            if self._task is asyncio.current_task():
                self._task = None
            if saving is not None:
                await asyncio.shield(saving)

    async def _save(self) -> None:
        try:
            await self._checkpoint()
        except Exception:
            # A failed save loses nothing yet: the next one, or the final write, still comes.
            logger.exception("saving the partial replies failed")
