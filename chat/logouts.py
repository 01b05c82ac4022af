"""Open sockets close when their session ends: logging out in one tab closes the others,
on every process.

Django's `user_logged_out` signal (sent in the thread of the logout request, before the
session is flushed) asks every chat service of this process to close its sockets of that
session with 4401, and with several processes (REDIS_URL) asks the others to close theirs.
Without this, a tab left open on a shared computer would go on chatting as its user after
they logged out elsewhere.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import HttpRequest

from chat import chats, crossprocess

logger = logging.getLogger(__name__)


@receiver(user_logged_out, dispatch_uid="chat.logouts.end_sockets")
def end_sockets(sender: Any, request: HttpRequest | None, **kwargs: Any) -> None:
    """A user logged out: their sockets of that session close, here and elsewhere. The
    logout itself must succeed whatever happens here."""
    session = getattr(request, "session", None)
    session_key = session.session_key if session is not None else None
    if session_key:
        end_everywhere(session_key)


def end_everywhere(key: str) -> None:
    """A session (or a token, `chat.tokens.credential_key`) has ended: what it opened
    closes, here and on the other processes. From a sync view's thread; what must succeed
    (the logout, the revocation) does whatever happens here."""
    for loop, service in chats.services():
        if not loop.is_closed():
            loop.call_soon_threadsafe(service.end_session, key)
    if crossprocess.enabled():
        try:
            async_to_sync(crossprocess.announce_session_end)(key)
        except Exception:
            logger.exception("telling the other processes that a session ended failed")
