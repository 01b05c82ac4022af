"""Word between the ASGI processes of one site, over the Redis channel layer: "stop the
reply of this conversation" and "how far is it?", for a reply that another process runs,
and "this session has ended", for the sockets another process holds.

Each process has one channel, in the group of all processes once it holds sockets or
streams or runs a reply (joined again every hour, before channels-redis lets the
membership expire: a day). Word goes to that group, and the process it concerns acts on
it; the others drop it. So a reply costs the channel layer nothing: no group of its own
to join and leave, which took two round trips and, for replies that start together, a
connection each. A stop or a question costs one message per process, and they are rare
(a click; a tab opening mid-reply elsewhere). With one process (no REDIS_URL) everything
is local and none of this runs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from uuid import UUID

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

STOP = "reply.stop"
END_SESSION = "session.end"
# "How far is this conversation's reply?", asked of the process that runs it, and its answer.
ASK = "reply.ask"
ANSWER = "reply.answer"
ASK_SECONDS = 2.0
# Every process that holds sockets or runs replies.
PROCESSES = "processes"
REJOIN_SECONDS = 3600
# Between two tries to reach Redis again after the listener lost it.
RECONNECT_SECONDS = 0.5


def enabled() -> bool:
    return bool(settings.REDIS_URL)


async def announce_session_end(session_key: str) -> None:
    """Ask every process to close its sockets of a session that has ended."""
    await get_channel_layer().group_send(PROCESSES, {"type": END_SESSION, "session": session_key})


class CrossProcess:
    """This process's channel, and what it does with the word it hears."""

    def __init__(
        self,
        on_stop: Callable[[UUID], object],
        on_session_end: Callable[[str], None],
        on_ask: Callable[[UUID, int | None], dict[str, Any] | None] = lambda c, after: None,
    ) -> None:
        self._on_stop, self._on_session_end, self._on_ask = on_stop, on_session_end, on_ask
        self._asked: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._channel: str | None = None
        self._listener: asyncio.Task[None] | None = None
        self._joined_processes_at: float | None = None

    async def request_stop(self, conversation_id: UUID) -> None:
        """Ask whichever process runs the conversation's reply to stop it."""
        await get_channel_layer().group_send(
            PROCESSES, {"type": STOP, "conversation": str(conversation_id)}
        )

    async def ask_runner(self, conversation_id: UUID, after: int | None) -> dict[str, Any] | None:
        """The running reply of the conversation as its process tells it: its message id,
        `seq`, text so far and the delta frames after `after`; None if no process answers
        within ASK_SECONDS (no reply runs)."""
        request = uuid.uuid4().hex
        answer = self._asked[request] = asyncio.get_running_loop().create_future()
        try:
            message = {
                "type": ASK,
                "conversation": str(conversation_id),
                "after": after,
                "reply_to": await self._own_channel(),
                "request": request,
            }
            await get_channel_layer().group_send(PROCESSES, message)
            async with asyncio.timeout(ASK_SECONDS):
                told: dict[str, Any] = await answer
                return told
        except TimeoutError:
            return None
        finally:
            self._asked.pop(request, None)

    def hears_word(self) -> bool:
        """Whether this process is in the group of all processes (and need not join now)."""
        joined_at = self._joined_processes_at
        now = asyncio.get_running_loop().time()
        return joined_at is not None and now - joined_at < REJOIN_SECONDS

    async def take_word(self) -> None:
        """This process holds sockets or runs replies: take word of the sessions that end,
        and of stops and questions about its replies. At once when it has already."""
        if self.hears_word():
            return
        now = asyncio.get_running_loop().time()
        self._joined_processes_at = now
        await get_channel_layer().group_add(PROCESSES, await self._own_channel())

    async def close(self) -> None:
        """Stop listening (tests, shutdown)."""
        listener, self._channel, self._listener = self._listener, None, None
        self._joined_processes_at = None
        if listener is not None:
            listener.cancel()
            # A listener that died (its error logged there) must not fail the closing.
            with suppress(asyncio.CancelledError, Exception):
                await listener

    async def _own_channel(self) -> str:
        if self._channel is None or self._listener is None or self._listener.done():
            self._joined_processes_at = None  # a new channel is in no group yet
            self._channel = await get_channel_layer().new_channel()
            self._listener = asyncio.create_task(
                self._listen(self._channel), name="crossprocess-listener"
            )
        return self._channel

    async def _listen(self, channel: str) -> None:
        """Act on the word heard, for the rest of the process's life: after Redis was lost
        (it restarted, and forgot every group), join again what this process was in."""
        layer = get_channel_layer()
        while True:
            try:
                message: dict[str, Any] = await layer.receive(channel)
            except (RedisError, OSError):
                logger.warning("the channel layer's connection dropped", exc_info=True)
                await self._come_back()
                continue
            except RuntimeError:
                # channels' layer refuses a second event loop (tests run one after another):
                # this listener ends; `_own_channel` starts another when next needed.
                logger.debug("the channel layer is another loop's", exc_info=True)
                return
            await self._act_on(message)

    async def _come_back(self) -> None:
        took_word = self._joined_processes_at is not None
        while True:
            await asyncio.sleep(RECONNECT_SECONDS)
            try:
                if took_word:
                    self._joined_processes_at = None
                    await self.take_word()
            except Exception:
                logger.debug("Redis is still out of reach", exc_info=True)
                continue
            logger.warning("the channel layer is back: the processes' group joined again")
            return

    async def _act_on(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == STOP:
            self._on_stop(UUID(message["conversation"]))
        elif kind == END_SESSION:
            self._on_session_end(message["session"])
        elif kind == ASK:
            await self._answer(message)
        elif kind == ANSWER:
            waiting = self._asked.get(message["request"])
            if waiting is not None and not waiting.done():
                waiting.set_result(message["answer"])

    async def _answer(self, message: dict[str, Any]) -> None:
        answer = self._on_ask(UUID(message["conversation"]), message["after"])
        if answer is None:
            return  # not running it (any more): the one that does answers
        reply = {"type": ANSWER, "request": message["request"], "answer": answer}
        try:
            await get_channel_layer().send(message["reply_to"], reply)
        except Exception:
            logger.warning("answering another process failed", exc_info=True)
