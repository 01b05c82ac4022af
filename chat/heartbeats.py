"""Processes that die without a word (SIGKILL, a crash, a lost machine) are noticed by the
others within seconds, and exactly one of them ends the dead process's replies.

With several processes (REDIS_URL) each process beats: every BEAT_SECONDS it renews a key
that expires after LIFE_SECONDS and lists the replies it runs. Every process also looks at
the others' lists: a list whose process key has expired belongs to a dead process, and the
first survivor to claim it (SET NX) marks those replies `interrupted` as they were last
saved, and tells their tabs on every process (`chat.fanout`). A process that stops
cleanly (SIGTERM) ends its own replies and deletes its keys itself.

So a reply left `streaming` by a dead process is settled within LIFE_SECONDS plus one
look (BEAT_SECONDS), about 8 s, instead of CHAT_STALE_REPLY_SECONDS after its last
checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from chat import redis_clients, redis_names

logger = logging.getLogger(__name__)

BEAT_SECONDS = 2.0
LIFE_SECONDS = 6
# Every process that has beaten, and for each its heartbeat, its replies and its claim;
# each name is the site's own (chat.redis_names).
PROCESSES = "processes"
ALIVE = "process:{}:alive"
REPLIES = "process:{}:replies"
CLAIM = "process:{}:claimed"
# How long a dead process's list of replies is kept for a survivor to claim.
REPLIES_KEPT_SECONDS = 24 * 3600
# Replies handed over by a process that stopped cleanly, each for one survivor to continue
# (LPOP gives each to exactly one); older than this, they are left as they are.
HANDOVER = "handover"
HANDOVER_SECONDS = 120

RunningReplies = Callable[[], list[str]]  # the message ids of the replies this process runs
EndReplies = Callable[[list[str]], Awaitable[None]]  # end a dead process's replies
TakeOver = Callable[[str], Awaitable[None]]  # continue a reply another process handed over


class Heartbeat:
    """This process's heartbeat, and its watch over the others'."""

    def __init__(
        self, url: str, running: RunningReplies, end_replies: EndReplies, take_over: TakeOver
    ) -> None:
        self.process = uuid.uuid4().hex
        self._redis: Redis = redis_clients.client(url)
        self._running, self._end_replies, self._take_over = running, end_replies, take_over
        self._task: asyncio.Task[None] | None = None
        self._soon = asyncio.Event()
        # Held while a handed-over reply is taken, from its LPOP until it runs here: a
        # cancel in between would leave it `streaming` in the database with nobody running
        # it. Taking ends for good once this process stops (`stop_taking_over`).
        self._taking = asyncio.Lock()
        self._stopping = False

    def start(self) -> None:
        if not self._stopping and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._beat_and_look(), name="heartbeat")

    def beat_soon(self) -> None:
        """A reply has started here: list it now, not at the next beat."""
        self._soon.set()
        self.start()

    async def _beat_and_look(self) -> None:
        while True:
            self._soon.clear()
            try:
                await self.beat()
                await self.look()
            except (RedisError, OSError):
                logger.warning("the heartbeat could not reach Redis", exc_info=True)
            with suppress(TimeoutError):
                async with asyncio.timeout(BEAT_SECONDS):
                    await self._soon.wait()

    async def beat(self) -> None:
        """Say this process is alive, and which replies it runs."""
        replies = self._running()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(_named(PROCESSES), self.process)
            pipe.set(_named(ALIVE.format(self.process)), 1, ex=LIFE_SECONDS)
            pipe.delete(_named(REPLIES.format(self.process)))
            if replies:
                pipe.sadd(_named(REPLIES.format(self.process)), *replies)
                pipe.expire(_named(REPLIES.format(self.process)), REPLIES_KEPT_SECONDS)
            await pipe.execute()

    async def look(self) -> None:
        """Continue the replies handed over; end those of processes whose heartbeat has
        stopped, once each."""
        while await self._take_one():
            pass
        for raw in await _awaited(self._redis.smembers(_named(PROCESSES))):
            process = raw.decode()
            if process == self.process or await self._redis.exists(_named(ALIVE.format(process))):
                continue
            if not await self._redis.set(
                _named(CLAIM.format(process)), self.process, nx=True, ex=60
            ):
                continue  # another survivor has it
            listed = await _awaited(self._redis.smembers(_named(REPLIES.format(process))))
            replies = [r.decode() for r in listed]
            if replies:
                logger.warning(
                    "process %s stopped beating: ending its replies %s",
                    process,
                    " ".join(replies),
                )
                await self._end_replies(replies)
            await self._redis.delete(_named(REPLIES.format(process)))
            await _awaited(self._redis.srem(_named(PROCESSES), process))

    async def _take_one(self) -> bool:
        """Continue the next reply handed over, if any; whether there was one."""
        async with self._taking:
            if self._stopping:
                return False
            raw = await _awaited(self._redis.lpop(_named(HANDOVER)))
            if raw is None:
                return False
            handed = json.loads(raw)
            if time.time() - handed["at"] < HANDOVER_SECONDS:
                try:
                    await self._take_over(handed["conversation"])
                except Exception:
                    logger.warning("continuing a reply handed over failed", exc_info=True)
            return True

    async def stop_taking_over(self) -> None:
        """This process stops: it takes no more replies, the one it is taking (if any)
        runs before this returns, and the heartbeat ends, so that the replies it runs can
        all be ended and handed over."""
        self._stopping = True
        async with self._taking:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def hand_over(self, conversation_ids: list[str]) -> None:
        """This process stops: the survivors continue its replies (saved `interrupted`)."""
        await self.stop_taking_over()  # so that it does not take them back itself
        if conversation_ids:
            now = time.time()
            items = [json.dumps({"conversation": c, "at": now}) for c in conversation_ids]
            await _awaited(self._redis.rpush(_named(HANDOVER), *items))
            logger.info("handed %d replies over to the other processes", len(items))

    async def close(self, *, stopped_cleanly: bool = True) -> None:
        """Stop beating; a process that ended its own replies takes itself off the list."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if stopped_cleanly:
            with suppress(RedisError, OSError):
                await self._redis.delete(
                    _named(ALIVE.format(self.process)), _named(REPLIES.format(self.process))
                )
                await _awaited(self._redis.srem(_named(PROCESSES), self.process))
        await self._redis.aclose()


def _named(key: str) -> str:
    return redis_names.name(key)


async def _awaited(result: Any) -> Any:
    """What the asyncio client's command returns (redis-py types both clients' alike)."""
    return await cast("Awaitable[Any]", result)
