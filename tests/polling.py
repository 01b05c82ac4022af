"""Waiting in a test for something to happen, by looking again until it has."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, interval: float = 0.01
) -> None:
    """Check `predicate` every `interval` seconds until it holds.

    The caller bounds the wait, as in `async with asyncio.timeout(2): await wait_until(...)`,
    so the deadline a test promises reads where the test states it. `predicate` may be a
    coroutine function (a query); `interval=0` checks at every turn of the event loop, for
    an effect that lasts only milliseconds.
    """
    while True:
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        await asyncio.sleep(interval)
