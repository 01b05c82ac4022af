"""Fixtures shared by the whole suite: users, their conversations and sessions, the model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import connections
from django.test import AsyncClient

from chat import chats
from chat.models import Conversation
from tests.chat_socket import ChatSocket
from tests.llm_server import FakeLLM

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session", autouse=True)
def close_orm_thread_connections(django_db_setup: None) -> Iterator[None]:
    """Close the connections of the thread where async code runs the ORM, before the test
    database is dropped: PostgreSQL refuses to drop a database somebody is connected to."""
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture
def user(db: None) -> User:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def other_user(db: None) -> User:
    return get_user_model().objects.create_user("mallory", password=PASSWORD)


@pytest.fixture
def make_conversation(db: None) -> Callable[..., Conversation]:
    def make(owner: User, **fields: Any) -> Conversation:
        fields.setdefault("model", "test-model")
        return Conversation.objects.create(owner=owner, **fields)

    return make


@pytest.fixture
def conversation(user: User, make_conversation: Callable[..., Conversation]) -> Conversation:
    """A conversation of `user`'s, with nothing said yet."""
    return make_conversation(user)


# --- Sessions -------------------------------------------------------------------------------


async def logged_in_client(user: User, **options: Any) -> AsyncClient:
    """A test client with a session of its own, logged in as `user`."""
    client = AsyncClient(**options)
    await client.aforce_login(user)
    return client


def session_cookie(client: AsyncClient) -> str:
    """The `Cookie` header that carries `client`'s session, for a socket or another client."""
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


# --- The model: our own OpenAI-compatible server -----------------------------------------


@pytest.fixture(scope="session")
def llm_server() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
async def llm(llm_server: FakeLLM, settings: Any) -> AsyncIterator[FakeLLM]:
    """The test model server, fresh for this test, and the app pointed at it."""
    llm_server.reset()
    settings.OPENAI_BASE_URL = llm_server.base_url
    settings.OPENAI_API_KEY = "test-key"
    yield llm_server
    # Nothing of this test may outlive it: its replies and the client bound to its loop.
    await chats.service().stop_all()


# --- Websockets -----------------------------------------------------------------------------


@pytest.fixture
def login_cookie() -> Callable[[User], Awaitable[str]]:
    """Log a user in with a new session; the `Cookie` header that carries it."""

    async def login(user: User) -> str:
        return session_cookie(await logged_in_client(user))

    return login


@pytest.fixture
async def open_socket(
    login_cookie: Callable[[User], Awaitable[str]],
) -> AsyncIterator[Callable[..., Awaitable[ChatSocket]]]:
    """Open chat sockets as a user; all are closed when the test ends."""
    sockets: list[ChatSocket] = []

    async def open_(user: User | None, conversation_id: Any, **kwargs: Any) -> ChatSocket:
        cookie = await login_cookie(user) if user is not None else None
        socket = ChatSocket(conversation_id, cookie=cookie, **kwargs)
        sockets.append(socket)
        await socket.connect()
        return socket

    yield open_
    for socket in sockets:
        await socket.close()
