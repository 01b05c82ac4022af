"""The HTTP handler that keeps requests to async views off per-request threads.

Django's `ASGIHandler` gives every request a thread (and so a database connection) of its
own. For the async views that is much of a JSON API request's CPU (README, "How it
works"); the handler below avoids it. `tests/test_asgi_handler.py` fails when Django
changes what it leans on: `ASGIHandler.__call__` doing nothing but open that thread's
context around `handle`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.urls import Resolver404, resolve

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class SharedOrmThreadASGIHandler(ASGIHandler):
    """Django's handler, without its per-request thread for requests to async views.

    `ASGIHandler` runs each request in its own `ThreadSensitiveContext`: a new thread and,
    on it, a new database connection, for a few short ORM calls. Outside such a context
    asgiref runs thread-sensitive calls on its one process-wide thread, the ORM thread
    the websockets already use, with its open connection. Sync views (login, which hashes
    a password; the admin) keep a thread of their own, so they never hold up the chats.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and routes_to_async_view(scope):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def routes_to_async_view(scope: Scope) -> bool:
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)
