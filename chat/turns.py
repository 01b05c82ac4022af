"""Turns at the model, fair between users.

A model that serves a limited number of requests at once (llama.cpp serves one) makes the
rest wait. First come, first served would let one user who starts ten replies hold up
everyone behind them; here the next turn goes to the waiting user whose last turn is the
oldest (a user who has had none comes first), each user's own requests in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class FairTurns:
    """At most `limit` turns held at once; the next goes to the user served longest ago."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        # Each waiting user's requests, in the order the users began to wait.
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}
        self._holding: dict[Hashable, int] = {}
        # When each waiting or holding user was last given a turn (a count of turns).
        self._last_turn: dict[Hashable, int] = {}
        self._given = 0

    @asynccontextmanager
    async def turn(self, user: Hashable) -> AsyncIterator[None]:
        """Hold a turn for the block; wait for one first if all are held."""
        if self.held < self.limit and not self._waiting:
            self._give(user)
        else:
            await self._wait(user)
        try:
            yield
        finally:
            self._release(user)

    def waiting(self) -> int:
        return sum(len(requests) for requests in self._waiting.values())

    async def _wait(self, user: Hashable) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(user)  # given a turn as it was cancelled: pass it on
            else:
                self._forget(user, granted)
            raise

    def _give(self, user: Hashable) -> None:
        self.held += 1
        self._holding[user] = self._holding.get(user, 0) + 1
        self._given += 1
        self._last_turn[user] = self._given

    def _release(self, user: Hashable) -> None:
        self.held -= 1
        self._holding[user] -= 1
        if not self._holding[user]:
            del self._holding[user]
        self._drop_if_idle(user)
        while self._waiting and self.held < self.limit:
            # The user served longest ago; of those never served, the first to wait.
            next_user = min(self._waiting, key=lambda u: self._last_turn.get(u, 0))
            requests = self._waiting[next_user]
            granted = requests.popleft()
            if not requests:
                del self._waiting[next_user]
            if not granted.done():
                self._give(next_user)
                granted.set_result(None)

    def _forget(self, user: Hashable, granted: asyncio.Future[None]) -> None:
        requests = self._waiting.get(user)
        if requests is not None and granted in requests:
            requests.remove(granted)
            if not requests:
                del self._waiting[user]
        self._drop_if_idle(user)

    def _drop_if_idle(self, user: Hashable) -> None:
        if user not in self._holding and user not in self._waiting:
            self._last_turn.pop(user, None)
