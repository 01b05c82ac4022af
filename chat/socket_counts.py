"""How many sockets each user has open, over every process (`CHAT_SOCKETS_PER_USER`).

One process counts its own sockets in memory, and that is the whole count. With several
processes (REDIS_URL) the counts live in Redis, so that a user cannot open the cap's worth
on each: one hash per user, with a field per process holding that process's count, and a
key per process that expires unless the process renews it while it has sockets open. A
process that dies without a word stops counting once its key expires (PROCESS_TTL); its
fields are dropped by the next opening that reads them. Opening checks the sum and counts
itself in one Lua script, so two processes cannot both take the last place.

Redis unreachable: the socket opens (the cap is a guard against abuse, not a reason to
refuse everyone while Redis restarts), and a warning is logged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import suppress
from typing import Any

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chat import redis_clients, redis_names

logger = logging.getLogger(__name__)

# A process's sockets count for this long after its last renewal.
PROCESS_TTL = 30  # seconds
RENEW_EVERY = PROCESS_TTL / 3
# A user's hash outlives its last socket by this much (it only holds counts).
USER_TTL = 24 * 3600

# Each the site's own (chat.redis_names).
USER_KEY = "sockets:user:{}"
PROCESS_KEY = "sockets:process:"

# KEYS[1] the user's hash; ARGV: this process's id, the cap, the process key prefix, the
# hash's TTL, the process key's TTL. The sum of the live processes' counts; under the cap,
# this process's count goes up by one (and its key is set, so that the others count it
# from now on) and the sum with it is returned, else -1. Dead processes' fields go.
TAKE = """
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local process, count = fields[i], tonumber(fields[i + 1])
  if process == ARGV[1] or redis.call('EXISTS', ARGV[3] .. process) == 1 then
    total = total + count
  else
    redis.call('HDEL', KEYS[1], process)
  end
end
if total >= tonumber(ARGV[2]) then
  return -1
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('SET', ARGV[3] .. ARGV[1], 1, 'EX', tonumber(ARGV[5]))
return total + 1
"""


class SocketCounts:
    """The open sockets of each user: `take` a place for a socket, `release` it after."""

    def __init__(self, redis_url: str | None = None) -> None:
        self._here: dict[int, int] = {}
        url = settings.REDIS_URL if redis_url is None else redis_url
        self._shared = SharedCounts(url) if url else None

    async def take(self, user_id: int) -> bool:
        """Count one more socket of the user's; False (nothing counted) at the cap."""
        cap = settings.CHAT_SOCKETS_PER_USER
        if self._here.get(user_id, 0) >= cap:
            return False
        if self._shared is not None and not await self._shared.take(user_id, cap):
            return False
        self._here[user_id] = self._here.get(user_id, 0) + 1
        if self._shared is not None:
            self._shared.keep_alive(bool(self._here))
        return True

    def release(self, user_id: int) -> None:
        count = self._here.get(user_id, 0) - 1
        if count > 0:
            self._here[user_id] = count
        else:
            self._here.pop(user_id, None)
        if self._shared is not None:
            self._shared.release(user_id)
            self._shared.keep_alive(bool(self._here))

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close()


class SharedCounts:
    """This process's part of the counts in Redis."""

    def __init__(self, url: str) -> None:
        self.process = uuid.uuid4().hex
        self._redis: Redis = redis_clients.client(url)
        self._take = self._redis.register_script(TAKE)
        self._released: dict[int, int] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None

    @property
    def process_key(self) -> str:
        return redis_names.name(PROCESS_KEY) + self.process

    async def take(self, user_id: int, cap: int) -> bool:
        try:
            taken = await self._take(
                keys=[redis_names.name(USER_KEY.format(user_id))],
                args=[self.process, cap, redis_names.name(PROCESS_KEY), USER_TTL, PROCESS_TTL],
            )
        except (RedisError, OSError):
            logger.warning("counting a socket in Redis failed; it opens uncounted", exc_info=True)
            return True
        return int(taken) >= 0

    def release(self, user_id: int) -> None:
        """Count one socket fewer, with the others released at the same time."""
        self._released[user_id] = self._released.get(user_id, 0) + 1
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="socket-counts")

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # the releases of this turn of the loop, together
        released, self._released = self._released, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, count in released.items():
                    pipe.hincrby(redis_names.name(USER_KEY.format(user_id)), self.process, -count)
                await pipe.execute()
        except (RedisError, OSError):
            # Counted too high until this process's key expires (it stops renewing when
            # it has no sockets).
            logger.warning("uncounting sockets in Redis failed", exc_info=True)

    def keep_alive(self, has_sockets: bool) -> None:
        """Renew this process's key while it has sockets open."""
        if has_sockets and (self._renewing is None or self._renewing.done()):
            self._renewing = asyncio.create_task(self._renew(), name="socket-counts-renewal")
        elif not has_sockets and self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None

    async def _renew(self) -> None:
        while True:
            with suppress(RedisError, OSError):
                await self._redis.set(self.process_key, 1, ex=PROCESS_TTL)
            await asyncio.sleep(RENEW_EVERY)

    async def close(self) -> None:
        """This process's counts stop counting at once."""
        tasks: list[Any] = [t for t in (self._renewing, self._flushing) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with suppress(RedisError, OSError):
            await self._redis.delete(self.process_key)
        await self._redis.aclose()
