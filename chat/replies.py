"""A reply being generated: its task, its text so far, its frames to every watching socket.

One task per reply, started with `asyncio.create_task` and kept in this process's registry,
so a socket that closes only stops watching, while "stop" cancels the task on purpose.
Text arrives token by token but goes out in frames at most every CHAT_FRAME_INTERVAL and
reaches the database only at checkpoints and at the end (DESIGN.md invariant 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import aclosing, contextmanager, suppress
from typing import Any
from uuid import UUID

from django.conf import settings

from chat import llm, persistence, watchers
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
        self._sent: list[str] = []  # text already sent in delta frames
        self._pending: list[str] = []  # text read from upstream, not yet sent
        self._wake = asyncio.Event()
        self._reading_done = False
        self._stop_requested = False
        self._finishing = False
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._checkpointed_seq = 0

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
        self.task = asyncio.create_task(
            self._run(llm.ReplyStream(model, prompt)), name=f"reply-{message_id}"
        )

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
        reader = asyncio.create_task(self._read(stream))
        try:
            if self._stop_requested:  # stopped before the task got to run
                raise asyncio.CancelledError
            await self._relay()
            await reader  # raises what the upstream raised
        except llm.LLMError as exc:
            status, error = Status.FAILED, exc
            logger.info("reply %s failed: %s", self.message_id, exc)
        except asyncio.CancelledError:
            status = Status.STOPPED if self._stop_requested else Status.INTERRUPTED
            raise
        except Exception as exc:
            status, error = Status.FAILED, llm.LLMError("internal_error", "Something broke.")
            logger.exception("reply %s crashed", self.message_id, exc_info=exc)
        finally:
            self._finishing = True
            reader.cancel()
            # Let the reader leave its `async with`, closing the upstream request, first.
            with suppress(asyncio.CancelledError, Exception):
                await reader
            await self._finish(status, stream.usage or stream.estimated_usage(), error)

    async def _read(self, stream: llm.ReplyStream) -> None:
        try:
            async with aclosing(stream.deltas()) as deltas:
                async for text in deltas:
                    self._pending.append(text)
                    self._wake.set()
        finally:
            self._reading_done = True
            self._wake.set()

    async def _relay(self) -> None:
        """Send what arrived as one frame, then rest a frame interval; until the stream ends."""
        loop = asyncio.get_running_loop()
        next_checkpoint = loop.time() + settings.CHAT_CHECKPOINT_INTERVAL
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._reading_done:
                return
            if loop.time() >= next_checkpoint:
                self._checkpoint()
                next_checkpoint = loop.time() + settings.CHAT_CHECKPOINT_INTERVAL
            await asyncio.sleep(settings.CHAT_FRAME_INTERVAL)

    async def _flush(self) -> None:
        if not self._pending:
            return
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

    def _checkpoint(self) -> None:
        """Save the partial text in the background, unless the last save is still running."""
        busy = self._checkpoint_task is not None and not self._checkpoint_task.done()
        if busy or self.seq == self._checkpointed_seq:
            return
        assert self.message_id is not None
        self._checkpointed_seq = self.seq
        self._checkpoint_task = asyncio.create_task(
            persistence.checkpoint(self.message_id, self.content)
        )

    async def _finish(self, status: str, usage: llm.Usage, error: llm.LLMError | None) -> None:
        """Send the last text, write the reply whole, tell every socket, leave the registry."""
        try:
            await self._flush()
            if self._checkpoint_task is not None:
                # The last checkpoint must not land after, and overwrite, the final write.
                with suppress(Exception):
                    await self._checkpoint_task
            assert self.message_id is not None
            content = self.content
            await persistence.finish(self.message_id, content, status, usage, error)
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
    """Stop every reply of this process and wait until each is saved (tests, shutdown)."""
    tasks = [reply.task for reply in list(_running.values()) if reply.task is not None]
    for reply in list(_running.values()):
        reply.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
