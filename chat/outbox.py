"""The messages on their way to one socket: in order, and without making anyone wait.

An ASGI server may make a send wait while its client is slow to read (uvicorn waits for
its write buffer to drain; daphne never waits, it buffers). The reply clock and the
watchers send to every socket of a conversation in turn, so awaiting one slow socket
would hold up all the others. Here a send that has to wait goes on in a task of its own,
and the messages after it queue behind it, up to CHAT_SOCKET_BACKLOG; a socket that falls
further behind is told so and closed (it resyncs when it reconnects: its `state` holds
everything).

A send that does not wait, which is every send on daphne, costs no task: it runs to its
end right here, inside `put`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


class Outbox:
    """One socket's messages in order; a send that waits holds up only this socket."""

    __slots__ = ("_fell_behind", "_queued", "_send", "_sender", "_shut")

    def __init__(self, send: Send, fell_behind: Message) -> None:
        self._send = send
        # The last message of a socket that fell too far behind (its close).
        self._fell_behind = fell_behind
        # The messages behind a send that waits; None while no send waits.
        self._queued: deque[Message] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._shut = False

    @property
    def backlog(self) -> int:
        """How many messages wait behind a send that has not finished."""
        return 0 if self._queued is None else len(self._queued)

    def put(self, message: Message) -> bool:
        """Send, or queue behind a send that waits; False when the socket fell too far
        behind and is being closed (nothing more goes out to it)."""
        if self._shut:
            return False
        if self._queued is not None:
            if len(self._queued) >= settings.CHAT_SOCKET_BACKLOG:
                self._overflowed()
                return False
            self._queued.append(message)
            return True
        sending = _coroutine(self._send(message))
        try:
            waiting_for = sending.send(None)
        except StopIteration:
            return True  # sent at once
        except BaseException:
            sending.close()
            raise  # a socket that went away: the caller's to handle, as any failed send
        self._queued = deque()
        self._sender = asyncio.create_task(self._drain(sending, waiting_for), name="outbox")
        return True

    def _overflowed(self) -> None:
        """Too far behind: drop what waits, and close after the send in flight."""
        assert self._queued is not None
        logger.info("closing a socket %d messages behind", len(self._queued))
        self._queued.clear()
        self._queued.append(self._fell_behind)
        self._shut = True

    async def _drain(self, sending: Coroutine[Any, Any, None], waiting_for: Any) -> None:
        try:
            await _finish(sending, waiting_for)
            while self._queued:
                await self._send(self._queued.popleft())
        except Exception:
            # The socket went away meanwhile: what waited for it has no one to go to.
            logger.debug("dropping the messages of a closed socket", exc_info=True)
        finally:
            self._queued = None


async def _finish(sending: Coroutine[Any, Any, None], waiting_for: Any) -> None:
    """Run to its end a coroutine that `Outbox.put` started by hand, as a task would have:
    wait for what it yielded (a future, or None to let others run), then resume it; it
    reads the future's outcome itself when it resumes."""
    try:
        while True:
            if waiting_for is None:
                await asyncio.sleep(0)
            else:
                # Not `await waiting_for`: the future is already marked as awaited by the
                # coroutine that yielded it, and a second await of it is refused.
                await asyncio.wait([waiting_for])
            waiting_for = sending.send(None)
    except StopIteration:
        return
    finally:
        sending.close()  # cancelled meanwhile: its own cleanup runs


def _coroutine(awaitable: Awaitable[None]) -> Coroutine[Any, Any, None]:
    if isinstance(awaitable, Coroutine):
        return awaitable
    return _await(awaitable)


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable
