"""Requests to async views skip Django's per-request thread (`chat.handlers`): their SQL runs
on asgiref's one shared thread, the websockets' ORM thread, while sync views keep a thread
of their own. Through `chatsite.asgi.application`; these fail when Django changes under it."""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from channels.testing import HttpCommunicator
from django.contrib.auth import get_user_model
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.db.backends.utils import CursorWrapper

from chat.handlers import routes_to_async_view
from chatsite.asgi import application
from tests.conftest import PASSWORD, logged_in_client, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def shared_orm_thread() -> int:
    """asgiref's one thread for thread-sensitive calls outside any per-request context."""
    return await asyncio.wrap_future(
        SyncToAsync.single_thread_executor.submit(threading.get_ident)
    )


@pytest.fixture
def sql_threads(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The threads that run SQL from now on."""
    threads: set[int] = set()

    def recording(execute: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(self: CursorWrapper, *args: Any, **kwargs: Any) -> Any:
            threads.add(threading.get_ident())
            return execute(self, *args, **kwargs)

        return recorded

    for name in ("execute", "executemany"):
        monkeypatch.setattr(CursorWrapper, name, recording(getattr(CursorWrapper, name)))
    return threads


async def get(app: Callable[..., Any], path: str, cookie: str) -> int:
    headers = [(b"host", b"testserver"), (b"cookie", cookie.encode())]
    communicator = HttpCommunicator(app, "GET", path, headers=headers)
    response = await communicator.get_response(10)
    await communicator.wait(10)  # the request is finished, and its body file closed
    return int(response["status"])


async def test_async_view_runs_its_sql_on_the_shared_orm_thread(user, sql_threads):
    cookie = session_cookie(await logged_in_client(user))
    sql_threads.clear()
    assert await get(application, "/api/conversations/", cookie) == 200
    assert sql_threads == {await shared_orm_thread()}


async def test_sync_view_runs_its_sql_on_a_thread_of_its_own(sql_threads):
    admin = await sync_to_async(get_user_model().objects.create_superuser)("root", "", PASSWORD)
    cookie = session_cookie(await logged_in_client(admin))
    sql_threads.clear()
    assert await get(application, "/admin/", cookie) == 200
    assert sql_threads
    assert await shared_orm_thread() not in sql_threads


async def test_django_handler_still_gives_async_views_a_thread_of_their_own(user, sql_threads):
    """What the handler saves. If Django stops doing it, the handler has no reason to be."""
    cookie = session_cookie(await logged_in_client(user))
    sql_threads.clear()
    assert await get(get_asgi_application(), "/api/conversations/", cookie) == 200
    assert sql_threads
    assert await shared_orm_thread() not in sql_threads


def test_django_handler_call_only_wraps_handle_in_a_thread_context():
    """For async views the handler calls `ASGIHandler.handle` itself, skipping `__call__`:
    whatever else Django's `__call__` comes to do would be skipped too. Read it if this fails."""
    function = ast.parse(textwrap.dedent(inspect.getsource(ASGIHandler.__call__))).body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    body = function.body[1:] if ast.get_docstring(function) else function.body
    assert [ast.unparse(statement) for statement in body] == [
        "if scope['type'] != 'http':\n"
        "    raise ValueError('Django can only handle ASGI/HTTP connections, not %s.' % "
        "scope['type'])",
        "async with ThreadSensitiveContext():\n    await self.handle(scope, receive, send)",
    ]


@pytest.mark.parametrize(
    ("path", "shares_orm_thread"),
    [
        ("/api/conversations/", True),
        ("/", True),
        ("/accounts/login/", False),  # hashes passwords: a thread of its own
        ("/admin/", False),
        ("/no/such/page/", False),
    ],
)
def test_only_async_views_share_the_orm_thread(path, shares_orm_thread):
    assert routes_to_async_view({"type": "http", "path": path}) is shares_orm_thread
