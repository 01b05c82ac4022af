"""A process's start and stop: it watches over the other processes from its start, and
saves its running replies when it stops, each keeping its text as `interrupted` (and
handed over to the others, with several processes).

Without the first, a process that has no socket open yet (one just restarted) would take
no reply that a stopping process hands over, and notice no process that dies. Without the
second, a stopped server loses what streamed since the last checkpoint, and its replies
are marked `interrupted` only when someone next opens the conversation.

daphne does not speak the ASGI lifespan protocol: its Twisted reactor is asked directly.
Servers that do (uvicorn, hypercorn) send `lifespan` events, answered by `Lifespan`.
"""

from __future__ import annotations

import asyncio
import sys

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, LifespanScope

from chat import chats


def save_replies_on_daphne_shutdown() -> None:
    """Under daphne, beat from the start (chat.heartbeats), and make Twisted wait for
    every reply's final write before it exits."""
    if "daphne.server" not in sys.modules:
        return  # another server: `Lifespan`, or (the test client) replies recover on load
    from twisted.internet import defer, reactor

    def before_shutdown() -> defer.Deferred[None]:
        return defer.Deferred.fromFuture(asyncio.ensure_future(interrupt_replies()))

    # (zope interfaces declare methods without `self`, which mypy misreads)
    reactor.callLater(0, watch_the_other_processes)  # type: ignore[arg-type]  # once the loop runs
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)  # type: ignore[arg-type]


class Lifespan:
    """The same start and stop, for a server that speaks the lifespan protocol. uvicorn
    sends `lifespan.shutdown` once its connections have closed (or its graceful timeout
    has passed): the replies still running then are saved and handed over."""

    async def __call__(
        self, scope: LifespanScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                watch_the_other_processes()
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await interrupt_replies()
                await send({"type": "lifespan.shutdown.complete"})
                return


def watch_the_other_processes() -> None:
    """Start this process's heartbeat, on the event loop that serves the app."""
    heartbeat = chats.service().heartbeat
    if heartbeat is not None:
        heartbeat.start()


async def interrupt_replies() -> None:
    await chats.service().interrupt_all()
