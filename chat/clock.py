"""The pace of every reply in this process: one task that, every CHAT_FRAME_INTERVAL,
sends each reply's new text as one frame, and every CHAT_CHECKPOINT_INTERVAL saves the
partial texts of all streaming replies in one database step.

One clock for all replies, instead of a timer and a save per reply: with hundreds of
replies streaming, per-reply timers and per-reply saves were a large part of the work.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from chat.replies import Reply

logger = logging.getLogger(__name__)

_task: asyncio.Task[None] | None = None


def ensure_running() -> None:
    """Start the clock if it is not running; it stops by itself when no reply is left."""
    global _task
    if _task is None or _task.done() or _task.get_loop() is not asyncio.get_running_loop():
        _task = asyncio.create_task(_tick(), name="reply-clock")


async def stop() -> None:
    global _task
    task, _task = _task, None
    if task is not None and not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def _tick() -> None:
    from chat import replies  # replies imports this module

    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    next_checkpoint = next_tick + settings.CHAT_CHECKPOINT_INTERVAL
    saving: asyncio.Task[None] | None = None
    try:
        while running := replies.all_running():
            for reply in running:
                try:
                    await reply.tick()
                except Exception:
                    # One reply's failure must not stop the beat: paced replies read only
                    # when the clock lets them.
                    logger.exception("a tick of reply %s failed", reply.message_id)
            # The save runs beside the frames: the ORM thread may be busy for a while (a
            # crowd of sends), and frames must not wait for it. One save at a time.
            if loop.time() >= next_checkpoint and (saving is None or saving.done()):
                next_checkpoint = loop.time() + settings.CHAT_CHECKPOINT_INTERVAL
                saving = asyncio.create_task(_save(running))
            # Ticks on a fixed schedule, so the time a pass takes does not stretch the
            # gaps; a pass that overran starts the next one at once.
            next_tick = max(next_tick + settings.CHAT_FRAME_INTERVAL, loop.time())
            await asyncio.sleep(next_tick - loop.time())
    finally:
        # From here on a new reply must start a new clock, not count on this one.
        global _task
        if _task is asyncio.current_task():
            _task = None
        if saving is not None:
            await asyncio.shield(saving)


async def _save(running: list[Reply]) -> None:
    """Save the new partial text of every streaming reply in one database step."""
    from chat import persistence

    saves, alive = {}, []
    for reply in running:
        if reply.message_id is None:
            continue
        if reply.seq > reply.checkpointed_seq:
            reply.checkpointed_seq = reply.seq
            saves[reply.message_id] = reply.content
        elif settings.REDIS_URL:
            # Other processes judge a reply stale by its last save: one waiting for the
            # model's first token (or for its turn) must still look alive to them.
            alive.append(reply.message_id)
    if not saves and not alive:
        return
    try:
        await persistence.checkpoint(saves, alive)
    except Exception:
        # A failed save loses nothing yet: the final write still comes.
        logger.exception("saving %d partial replies failed", len(saves))
