"""Saving the running replies when the server stops: each keeps its text, as `interrupted`.

Without this, a stopped server loses what streamed since the last checkpoint, and its
replies are marked `interrupted` only when someone next opens the conversation.
"""

from __future__ import annotations

import asyncio
import sys

from chat import chats


def save_replies_on_daphne_shutdown() -> None:
    """Under daphne, make Twisted wait for every reply's final write before it exits."""
    if "daphne.server" not in sys.modules:
        return  # another server (uvicorn, the test client): replies recover on next load
    from twisted.internet import defer, reactor

    def before_shutdown() -> defer.Deferred[None]:
        return defer.Deferred.fromFuture(asyncio.ensure_future(interrupt_replies()))

    # (zope interfaces declare methods without `self`, which mypy misreads)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)  # type: ignore[arg-type]


async def interrupt_replies() -> None:
    await chats.service().interrupt_all()
