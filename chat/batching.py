"""Database steps that arrive together, done together.

Every step runs on the one ORM thread. When a crowd of chats sends at the same instant,
each send's own transaction (a few milliseconds of the ORM's CPU) queues behind all the
others, and the last reply starts only after all of them. A `Batcher` lets a step wait
for the step in progress, then go in the next one with every other request that arrived
meanwhile: one trip to the ORM thread and one set of queries for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class Batcher(Generic[Request, Result]):
    """Hands requests to `step` in batches of at most `max_size`, first come first served.

    `step` answers a list of requests with one result per request, in order: an exception
    among the results is raised to that request's caller alone. `key` says which requests
    must not share a batch (two steps on the same row); a later one waits for the next.
    """

    def __init__(
        self,
        step: Callable[[list[Request]], Awaitable[list[Result | Exception]]],
        *,
        max_size: int = 100,
        key: Callable[[Request], Hashable] = id,
    ) -> None:
        self._step, self._max_size, self._key = step, max_size, key
        self._waiting: list[tuple[Request, asyncio.Future[Result]]] = []
        # One worker per event loop (one in production; tests run several in turn).
        self._workers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}

    async def submit(self, request: Request) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((request, future))
        worker = self._workers.get(loop)
        if worker is None or worker.done():
            self._workers = {other: w for other, w in self._workers.items() if not w.done()}
            self._workers[loop] = loop.create_task(self._work(), name="batcher")
        return await future

    async def _work(self) -> None:
        while batch := self._take():
            try:
                results = await self._step([request for request, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:
                # The whole step failed (the database is gone): every caller learns it.
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its caller stopped waiting (a socket that closed)
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _take(self) -> list[tuple[Request, asyncio.Future[Result]]]:
        """The next batch of this loop's requests, in arrival order. A request whose caller
        stopped waiting, or whose loop has closed, is dropped; another loop's request
        waits for that loop's own worker."""
        loop = asyncio.get_running_loop()
        batch: list[tuple[Request, asyncio.Future[Result]]] = []
        keys: set[Hashable] = set()
        later = []
        for request, future in self._waiting:
            if future.done() or future.get_loop().is_closed():
                continue
            key = self._key(request)
            if future.get_loop() is not loop:
                later.append((request, future))
            elif len(batch) < self._max_size and key not in keys:
                batch.append((request, future))
                keys.add(key)
            else:
                later.append((request, future))
        self._waiting[:] = later
        return batch
