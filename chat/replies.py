"""A reply being generated: its task, its text so far, its frames to every watching socket.

One task per reply, started with `asyncio.create_task` and kept in this process's registry,
so a socket that closes only stops watching, while "stop" cancels the task on purpose.
Text arrives token by token. The first text goes out at once; the rest is gathered and
sent by the process's one clock (`chat.clock`), which every CHAT_FRAME_INTERVAL sends one
frame per reply with new text and, every CHAT_CHECKPOINT_INTERVAL, saves all partial
texts in one database step (DESIGN.md invariant 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import aclosing, contextmanager, suppress
from typing import Any
from uuid import UUID

from chat import clock, crossprocess, llm, persistence, watchers
from chat.models import Message

logger = logging.getLogger(__name__)

Status = Message.Status


class Reply:
    """One assistant reply, from reservation to its final write."""

    def __init__(self, conversation_id: UUID) -> None:
        self.conversation_id = conversation_id
        self.message_id: UUID | None = None
        self.seq = 0
        self.task: asyncio.Task[None] | None = None
        self.stream: llm.ReplyStream | None = None
        self.checkpointed_seq = 0
        self._sent: list[str] = []  # text already sent in delta frames
        self._pending: list[str] = []  # text read from upstream, not yet sent
        self._flushing = False
        self._stop_requested = False
        self._finishing = False

    # --- Seen by consumers and views ------------------------------------------------------

    def snapshot(self) -> dict[str, Any] | None:
        """All text sent so far, up to delta `seq`: what a newly connected socket renders."""
        if self.message_id is None:
            return None
        return {"message_id": str(self.message_id), "seq": self.seq, "content": self.content}

    @property
    def content(self) -> str:
        if len(self._sent) > 1:
            self._sent[:] = ["".join(self._sent)]
        return self._sent[0] if self._sent else ""

    def start(self, message_id: UUID, model: str, prompt: list[dict[str, str]]) -> None:
        self.message_id = message_id
        self.stream = llm.ReplyStream(model, prompt)
        self.task = asyncio.create_task(self._run(self.stream), name=f"reply-{message_id}")
        self.task.add_done_callback(self._task_done)
        clock.ensure_running()

    def stop(self) -> None:
        """Cancel the reply; it saves what it has as `stopped` and closes the upstream."""
        if self._stop_requested or self._finishing:
            return  # a second cancel would interrupt the final write
        self._stop_requested = True
        if self.task is not None:
            self.task.cancel()

    # --- The task -------------------------------------------------------------------------

    async def _run(self, stream: llm.ReplyStream) -> None:
        status: str = Status.COMPLETE
        error: llm.LLMError | None = None
        try:
            if self._stop_requested:  # stopped before the task got to run
                raise asyncio.CancelledError
            if crossprocess.enabled():
                await self._join_group()
            # Leaving this block, however it ends, closes the upstream request first.
            async with aclosing(stream.deltas()) as deltas:
                async for text in deltas:
                    self._pending.append(text)
                    if self.seq == 0 or stream.pausable:
                        # The first words at once. After them, a paced stream reads once
                        # per clock tick, so what it read is already a whole frame; an
                        # unpaced one leaves its text for the clock to send.
                        await self.flush()
                        stream.paced = True
        except llm.LLMError as exc:
            status, error = Status.FAILED, exc
            logger.info("reply %s failed: %s", self.message_id, exc)
        except asyncio.CancelledError:
            if self._stop_requested:
                status = Status.STOPPED
            else:  # the server is stopping
                status, error = Status.INTERRUPTED, llm.INTERRUPTED
            raise
        except Exception as exc:
            status, error = Status.FAILED, llm.LLMError("internal_error", "Something broke.")
            logger.exception("reply %s crashed", self.message_id, exc_info=exc)
        finally:
            self._finishing = True
            finish = asyncio.ensure_future(
                self._finish(status, stream.usage or stream.estimated_usage(), error)
            )
            try:
                await asyncio.shield(finish)
            except asyncio.CancelledError:
                await finish  # a cancel now (server shutdown) must not lose the final write
                raise

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Leave the registry however the task ended (even cancelled before it ran), and
        log what nobody awaits."""
        release(self)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("reply %s ended with an error", self.message_id, exc_info=exc)

    async def _join_group(self) -> None:
        try:
            await crossprocess.joined(self.conversation_id)
        except Exception:
            # The reply goes on; only a stop from another process's tab cannot reach it.
            logger.warning("reply %s: the channel layer is unreachable", self.message_id)

    async def tick(self) -> None:
        """The clock's beat: send what is gathered, and let a paced stream read again."""
        await self.flush()
        if self.stream is not None:
            self.stream.release()

    async def flush(self) -> None:
        """Send the text gathered since the last frame, as one frame."""
        if not self._pending or self._flushing:
            return  # nothing new, or a send in progress: the next tick takes it
        self._flushing = True
        try:
            text = "".join(self._pending)
            self._pending.clear()
            self.seq += 1
            self._sent.append(text)
            frame = {
                "type": "delta",
                "message_id": str(self.message_id),
                "seq": self.seq,
                "text": text,
            }
            await watchers.broadcast(self.conversation_id, frame)
        finally:
            self._flushing = False

    async def _finish(self, status: str, usage: llm.Usage, error: llm.LLMError | None) -> None:
        """Send the last text, write the reply whole, tell every socket, leave the registry."""
        try:
            while self._flushing:  # the clock is sending this reply's last frame
                await asyncio.sleep(0)
            await self.flush()
            assert self.message_id is not None
            content = self.content
            try:
                final = persistence.Final(self.message_id, content, status, usage, error)
                await persistence.finish(final)
            except Exception:
                # The tabs still learn how it ended; the row keeps its last checkpoint and
                # is settled as `interrupted` when the conversation is next opened.
                logger.exception("saving reply %s failed", self.message_id)
            await watchers.broadcast(
                self.conversation_id,
                {
                    "type": "done",
                    "message_id": str(self.message_id),
                    "status": status,
                    "content": content,
                    "usage": usage_json(usage),
                    "error": {"code": error.code, "detail": error.detail} if error else None,
                },
            )
        finally:
            release(self)
            if crossprocess.enabled():
                with suppress(Exception):  # the group entry expires by itself anyway
                    await crossprocess.left(self.conversation_id)


def usage_json(usage: llm.Usage) -> dict[str, int | bool]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "estimated": usage.estimated,
    }


# --- The registry of this process's replies ------------------------------------------------

_running: dict[UUID, Reply] = {}


def running(conversation_id: UUID) -> Reply | None:
    return _running.get(conversation_id)


def all_running() -> list[Reply]:
    return list(_running.values())


@contextmanager
def reserved(conversation_id: UUID) -> Iterator[Reply]:
    """Claim the conversation for a new reply, released unless the reply was started.

    Claimed before the database is asked, so two sends in this process cannot both start.
    """
    if conversation_id in _running:
        raise persistence.Refused("busy", "A reply is still being written; stop it or wait.")
    reply = _running[conversation_id] = Reply(conversation_id)
    try:
        yield reply
    finally:
        if reply.task is None:
            release(reply)


def release(reply: Reply) -> None:
    if _running.get(reply.conversation_id) is reply:
        del _running[reply.conversation_id]


async def stop_all() -> None:
    """Stop every reply of this process and wait until each is saved (tests)."""
    tasks = [reply.task for reply in all_running() if reply.task is not None]
    for reply in all_running():
        reply.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    await clock.stop()


async def interrupt_all() -> None:
    """End every reply of this process as `interrupted`, its text saved (server shutdown)."""
    tasks = [reply.task for reply in all_running() if reply.task is not None]
    for reply in all_running():
        if reply.task is not None and not reply._finishing:  # the rest end by themselves
            reply.task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await clock.stop()
