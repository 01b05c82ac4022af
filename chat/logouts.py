"""Open sockets close when their session ends: logging out in one tab closes the others,
on every process.

Each socket remembers the session it opened with. Django's `user_logged_out` signal
(sent in the thread of the logout request, before the session is flushed) closes this
process's sockets of that session with 4401, and with several processes (REDIS_URL) asks
the others to close theirs (`chat.crossprocess`). Without this, a tab left open on a
shared computer would go on chatting as its user after they logged out elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import HttpRequest

logger = logging.getLogger(__name__)


class Socket(Protocol):
    async def end_session(self) -> None:
        """Close, as a socket whose session has ended."""


_sockets: dict[str, set[Socket]] = {}
_loop: asyncio.AbstractEventLoop | None = None  # the loop the sockets live on
_closing: set[asyncio.Task[None]] = set()


def opened(session_key: str, socket: Socket) -> None:
    global _loop
    _loop = asyncio.get_running_loop()
    _sockets.setdefault(session_key, set()).add(socket)


def closed(session_key: str, socket: Socket) -> None:
    sockets = _sockets.get(session_key)
    if sockets is not None:
        sockets.discard(socket)
        if not sockets:
            del _sockets[session_key]


def end_local(session_key: str) -> None:
    """Close this process's sockets of the session (on their event loop)."""
    for socket in _sockets.pop(session_key, ()):
        task = asyncio.ensure_future(socket.end_session())
        _closing.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(_closing.discard)


@receiver(user_logged_out, dispatch_uid="chat.logouts.end_sockets")
def end_sockets(sender: Any, request: HttpRequest | None, **kwargs: Any) -> None:
    """A user logged out: their sockets of that session close, here and elsewhere. The
    logout itself must succeed whatever happens here."""
    session = getattr(request, "session", None)
    session_key = session.session_key if session is not None else None
    if not session_key:
        return
    loop = _loop
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(end_local, session_key)
    from chat import crossprocess  # crossprocess imports this module

    if crossprocess.enabled():
        try:
            async_to_sync(crossprocess.end_session)(session_key)
        except Exception:
            logger.exception("telling the other processes about a logout failed")
