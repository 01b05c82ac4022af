"""The project's ASGI application as the benchmark serves it, counting SQL statements.

    daphne bench.probe_asgi:application

Every database connection the process opens gets an execute wrapper that counts its
statements, and their executions (an `executemany` of n rows is one statement sent, which
the database runs n times); `GET /__bench__/stats` answers both counts (and the process
id) before Django sees the request. Every other request goes to `chatsite.asgi.application`
unchanged.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.db.backends.signals import connection_created

from chatsite.asgi import application as chat_application

STATS_PATH = "/__bench__/stats"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_lock = threading.Lock()  # statements run on the ORM thread and on views' threads
_queries = 0
_executions = 0


def _count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
    global _queries, _executions
    if many and not isinstance(params, list | tuple):
        params = list(params)  # counted, then passed on whole
    with _lock:
        _queries += 1
        _executions += len(params) if many else 1
    return execute(sql, params, many, context)


def _install_counter(sender: Any, connection: Any, **kwargs: Any) -> None:
    # The signal fires again when a closed connection reopens: count its statements once.
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_install_counter)


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"] == STATS_PATH:
        body = json.dumps(
            {"queries": _queries, "executions": _executions, "pid": os.getpid()}
        ).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await chat_application(scope, receive, send)
