"""A reply being generated: its task, its text so far, its frames to every watcher.

One task per reply, started with `asyncio.create_task` and kept in the process's
registry (`Replies`), so a socket that closes only stops watching, while "stop" cancels
the task on purpose. Text arrives token by token. The first text goes out at once; the
rest is gathered and sent by the process's one clock (`chat.clock`), which every
CHAT_FRAME_INTERVAL sends one frame per reply with new text and, every
CHAT_CHECKPOINT_INTERVAL, saves all partial texts in one database step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from time import monotonic
from typing import Any
from uuid import UUID

from django.conf import settings

from chat import llm, metrics, persistence, refusals
from chat.batching import Batcher
from chat.clock import Clock
from chat.crossprocess import CrossProcess
from chat.models import Message
from chat.serializers import done_frame
from chat.text import storable
from chat.watchers import Frame, Watchers

logger = logging.getLogger(__name__)

Status = Message.Status

# Seconds between tries of a final write that failed: doubling up to the longest.
FINAL_WRITE_FIRST_RETRY = 0.5
FINAL_WRITE_LONGEST_RETRY = 10.0


class Reply:
    """One assistant reply, from reservation to its final write."""

    def __init__(self, conversation_id: UUID, replies: Replies) -> None:
        self.conversation_id = conversation_id
        self.replies = replies
        self.message_id: UUID | None = None
        self.seq = 0
        self.task: asyncio.Task[None] | None = None
        self.stream: llm.ReplyStream | None = None
        self.checkpointed_seq = 0
        # How it ended, once it has: the `done` frame every watcher got.
        self.done: Frame | None = None
        self._sent: list[str] = []  # text already sent in delta frames (after any prefix)
        self._ends: list[int] = []  # where each delta's text ends in it, by seq
        self._prefix_length = 0  # the text it continues (a continued reply)
        self._base_usage: llm.Usage | None = None  # what that text used
        self._pending: list[str] = []  # text read from upstream, not yet sent
        self._sending = asyncio.Lock()  # held while a frame is sent
        self._stop_requested = False
        self._finishing = False
        # When it was asked for, and when its last frame went out (chat.metrics).
        self._asked_at = monotonic()
        self._last_frame_at = 0.0

    # --- Seen by the chat service -----------------------------------------------------------

    def snapshot(self) -> Frame | None:
        """All text sent so far, up to delta `seq`: what a newly connected socket renders."""
        if self.message_id is None:
            return None
        return {"message_id": str(self.message_id), "seq": self.seq, "content": self.content}

    def deltas_after(self, seq: int) -> list[Frame]:
        """The delta frames after `seq`, as they were sent: for a stream that reattaches."""
        content, frames = self.content, []
        for number in range(max(seq, 0) + 1, self.seq + 1):
            start = self._ends[number - 2] if number > 1 else self._prefix_length
            frames.append(self._delta(number, content[start : self._ends[number - 1]]))
        return frames

    @property
    def content(self) -> str:
        if len(self._sent) > 1:
            self._sent[:] = ["".join(self._sent)]
        return self._sent[0] if self._sent else ""

    def start(
        self,
        message_id: UUID,
        model: str,
        prompt: list[dict[str, str]],
        max_tokens: int | None = None,
        user_id: int | None = None,
        continues: tuple[str, llm.Usage] | None = None,
    ) -> None:
        """Start the reply; `continues`: the text it goes on after, and what that used."""
        if continues is not None:
            prefix, self._base_usage = continues
            self._sent, self._prefix_length = [prefix], len(prefix)
        self.message_id = message_id
        self.stream = llm.ReplyStream(
            self.replies.upstream, model, prompt, max_tokens=max_tokens, user=user_id
        )
        self.task = asyncio.create_task(self._run(self.stream), name=f"reply-{message_id}")
        self.task.add_done_callback(self._task_done)
        self.replies.clock.ensure_running()

    def stop(self) -> None:
        """Cancel the reply; it saves what it has as `stopped` and closes the upstream."""
        if self._stop_requested or self._finishing:
            return  # a second cancel would interrupt the final write
        self._stop_requested = True
        if self.task is not None:
            self.task.cancel()

    def interrupt(self) -> None:
        """Cancel the reply as the server stops: it saves what it has as `interrupted`."""
        if self.task is not None and not self._finishing:  # the rest end by themselves
            self.task.cancel()

    # --- The task -------------------------------------------------------------------------

    async def _run(self, stream: llm.ReplyStream) -> None:
        status: str = Status.COMPLETE
        error: llm.LLMError | None = None
        try:
            if self._stop_requested:  # stopped before the task got to run
                raise asyncio.CancelledError
            await self.replies.take_word(self)
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
                status = Status.INTERRUPTED
                error = llm.LLMError(persistence.INTERRUPTED_CODE, persistence.INTERRUPTED_DETAIL)
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
        self.replies.release(self)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("reply %s ended with an error", self.message_id, exc_info=exc)

    async def tick(self) -> None:
        """The clock's beat: send what is gathered, and let a paced stream read again."""
        await self.flush()
        if self.stream is not None:
            self.stream.release()

    async def flush(self, *, after_sending: bool = False) -> None:
        """Send the text gathered since the last frame, as one frame. A frame being sent
        means the next tick takes the rest; unless `after_sending`: then wait for it."""
        if self._sending.locked() and not after_sending:
            return
        async with self._sending:
            if not self._pending:
                return
            text = storable("".join(self._pending))
            self._pending.clear()
            self.seq += 1
            self._sent.append(text)
            self._ends.append((self._ends[-1] if self._ends else self._prefix_length) + len(text))
            now = monotonic()
            if self.seq == 1:
                metrics.FIRST_TOKEN.observe(now - self._asked_at)
            else:
                metrics.FRAME_GAPS.observe(now - self._last_frame_at)
            self._last_frame_at = now
            await self.replies.watchers.broadcast(
                self.conversation_id, self._delta(self.seq, text)
            )

    async def _save(self, final: persistence.Final) -> None:
        """The final write, tried again until the database takes it. Meanwhile the reply
        stays registered, its text in memory: tabs that open see it as still running (it
        is not saved yet), and it cannot be taken for an orphan and settled."""
        delay = FINAL_WRITE_FIRST_RETRY
        while True:
            try:
                await self.replies.finish(final)
                return
            except Exception:
                logger.exception(
                    "saving reply %s failed; trying again in %.1f s", self.message_id, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, FINAL_WRITE_LONGEST_RETRY)

    def _delta(self, seq: int, text: str) -> Frame:
        return {"type": "delta", "message_id": str(self.message_id), "seq": seq, "text": text}

    async def _finish(self, status: str, usage: llm.Usage, error: llm.LLMError | None) -> None:
        """Send the last text, write the reply whole, tell every watcher, leave the registry."""
        metrics.count_ending(status)
        if self._base_usage is not None:  # a continued reply counts what it used before
            base = self._base_usage
            usage = llm.Usage(
                base.prompt_tokens + usage.prompt_tokens,
                base.completion_tokens + usage.completion_tokens,
                base.estimated or usage.estimated,
            )
        try:
            await self.flush(after_sending=True)  # after the frame the clock may be sending
            assert self.message_id is not None
            content = self.content
            final = persistence.Final(
                self.message_id,
                content,
                status,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.estimated,
                error.code if error else "",
                error.detail if error else "",
            )
            await self._save(final)
            self.done = done_frame(
                self.message_id,
                status,
                content,
                usage_json(usage),
                {"code": error.code, "detail": error.detail} if error else None,
            )
            await self.replies.watchers.broadcast(self.conversation_id, self.done)
        finally:
            self.replies.release(self)


def usage_json(usage: llm.Usage) -> dict[str, int | bool]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "estimated": usage.estimated,
    }


class Replies:
    """This process's running replies, one per conversation at most, and what they share:
    the watchers they send to, the way to the model, the clock, and the final writes."""

    def __init__(
        self, watchers: Watchers, upstream: llm.Upstream, crossprocess: CrossProcess | None
    ) -> None:
        self.watchers = watchers
        self.upstream = upstream
        self.crossprocess = crossprocess
        self.clock = Clock(self._tick, self._checkpoint)
        self._running: dict[UUID, Reply] = {}
        # Replies that end together (a crowd that started together) are written together.
        self._finals: Batcher[persistence.Final, None] = Batcher(
            persistence.finish_all, key=lambda final: final.message_id
        )

    def running(self, conversation_id: UUID) -> Reply | None:
        return self._running.get(conversation_id)

    def all_running(self) -> list[Reply]:
        return list(self._running.values())

    @contextmanager
    def reserved(self, conversation_id: UUID) -> Iterator[Reply]:
        """Claim the conversation for a new reply, released unless the reply was started.

        Claimed before the database is asked, so two sends in this process cannot both
        start."""
        if conversation_id in self._running:
            raise refusals.busy()
        reply = self._running[conversation_id] = Reply(conversation_id, self)
        try:
            yield reply
        finally:
            if reply.task is None:
                self.release(reply)

    def release(self, reply: Reply) -> None:
        if self._running.get(reply.conversation_id) is reply:
            del self._running[reply.conversation_id]

    async def finish(self, final: persistence.Final) -> None:
        await self._finals.submit(final)

    async def take_word(self, reply: Reply) -> None:
        """Stops and questions about the reply from other processes reach this one (at
        once if it has heard the word before: it only joins once an hour)."""
        if self.crossprocess is None:
            return
        try:
            await self.crossprocess.take_word()
        except Exception:
            # The reply goes on; only a stop from another process's tab cannot reach it.
            logger.warning("reply %s: the channel layer is unreachable", reply.message_id)

    async def stop_all(self) -> None:
        """Stop every reply and wait until each is saved (tests)."""
        await self._end_all(Reply.stop)

    async def interrupt_all(self) -> None:
        """End every reply as `interrupted`, its text saved (server shutdown)."""
        await self._end_all(Reply.interrupt)

    async def _end_all(self, end: Any) -> None:
        running = self.all_running()
        tasks = [reply.task for reply in running if reply.task is not None]
        for reply in running:
            end(reply)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.clock.stop()

    # --- The clock's work -------------------------------------------------------------------

    async def _tick(self) -> bool:
        """One beat: each reply sends its new text. False once no reply is left."""
        running = self.all_running()
        for reply in running:
            try:
                await reply.tick()
            except Exception:
                # One reply's failure must not stop the beat: paced replies read only
                # when the clock lets them.
                logger.exception("a tick of reply %s failed", reply.message_id)
        return bool(running)

    async def _checkpoint(self) -> None:
        """Save the new partial text of every streaming reply in one database step."""
        saves, seqs, alive = {}, {}, []
        for reply in self.all_running():
            if reply.message_id is None:
                continue
            if reply.seq > reply.checkpointed_seq:
                saves[reply.message_id] = reply.content
                seqs[reply.message_id] = (reply, reply.seq)
            elif settings.REDIS_URL:
                # Other processes judge a reply stale by its last save: one waiting for the
                # model's first token (or for its turn) must still look alive to them.
                alive.append(reply.message_id)
        if not saves and not alive:
            return
        failed = await persistence.checkpoint(saves, alive)
        # Only a save that succeeded counts: a failed one is tried again next time.
        for message_id, (reply, seq) in seqs.items():
            if message_id not in failed:
                reply.checkpointed_seq = max(reply.checkpointed_seq, seq)
        if failed:
            logger.error("saving the partial text of %d replies failed", len(failed))
