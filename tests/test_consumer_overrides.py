"""`ConversationConsumer.__call__` replaces channels' `AsyncConsumer.__call__`: each socket's
messages are awaited in the socket's own task, instead of in a second task and an
`asyncio.wait` that every idle socket would hold. Its `dispatch` replaces channels' without
the trip to the ORM thread before every message (README, "How it stays fast"). Through
`chatsite.asgi.application`; these fail when channels changes under the overrides."""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from contextlib import suppress
from typing import Any

import pytest
from channels import consumer as channels_consumer
from channels.consumer import AsyncConsumer

from chat.consumers import ConversationConsumer
from tests.chat_socket import ChatSocket

pytestmark = pytest.mark.django_db(transaction=True)

SOCKETS = 4


@pytest.fixture
def consumers(monkeypatch: pytest.MonkeyPatch) -> list[ConversationConsumer]:
    """Every consumer that connects from now on."""
    opened: list[ConversationConsumer] = []
    connect = ConversationConsumer.connect

    async def recorded(self: ConversationConsumer) -> None:
        opened.append(self)
        await connect(self)

    monkeypatch.setattr(ConversationConsumer, "connect", recorded)
    return opened


async def idle_sockets(conversation_id: Any, cookie: str) -> tuple[float, list[ChatSocket]]:
    """Tasks held per open socket that does nothing, the socket's own (the app instance,
    which daphne runs as a task too) included; and the sockets, to close."""
    sockets = [ChatSocket(conversation_id, cookie=cookie) for _ in range(SOCKETS + 1)]
    await sockets[0].connect()  # whatever a process starts once, it has started now
    before = len(socket_tasks())
    for socket in sockets[1:]:
        await socket.connect()
        assert socket.connected
    return (len(socket_tasks()) - before) / SOCKETS, sockets


def socket_tasks() -> list[asyncio.Task[Any]]:
    """The tasks of the sockets: the chat service names each task of its own (its
    listeners, heartbeat, publishing), which come and go with Redis, not with sockets."""
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("Task-")]


async def test_idle_socket_holds_one_task(user, conversation, login_cookie, consumers):
    tasks, sockets = await idle_sockets(conversation.id, await login_cookie(user))
    assert tasks == 1
    # It still serves frames, and stops watching however it ends: closed, or cancelled
    # (daphne cancels a consumer 10 s after its client left without a close).
    await sockets[1].send(type="nonsense")
    assert (await sockets[1].receive())["code"] == "bad_request"
    await sockets[1].close()
    cancelled, sockets[2].connected = sockets[2].communicator.future, False
    cancelled.cancel()
    with suppress(asyncio.CancelledError):
        await cancelled
    assert consumers[1].attachment is None and consumers[2].attachment is None
    assert consumers[3].attachment is not None
    for socket in sockets:
        await socket.close()


async def test_channels_call_holds_two_tasks_per_idle_socket(
    user, conversation, login_cookie, monkeypatch
):
    """What the override saves. If channels stops spending a task per socket, drop it."""
    monkeypatch.delattr(ConversationConsumer, "__call__")
    tasks, sockets = await idle_sockets(conversation.id, await login_cookie(user))
    assert tasks == 2
    for socket in sockets:
        await socket.close()


async def attributes_set_on_call(
    conversation_id: Any, cookie: str, consumers: list[Any]
) -> set[str]:
    socket = ChatSocket(conversation_id, cookie=cookie)
    await socket.connect()
    await socket.close()
    [consumer] = consumers
    consumers.clear()
    return set(vars(consumer))


async def test_call_sets_up_the_consumer_as_channels_does(
    user, conversation, login_cookie, consumers, monkeypatch
):
    """The override sets what channels' own `__call__` sets (with no channel layer);
    `connect` sets the rest."""
    cookie = await login_cookie(user)
    ours = await attributes_set_on_call(conversation.id, cookie, consumers)
    monkeypatch.delattr(ConversationConsumer, "__call__")
    assert ours == await attributes_set_on_call(conversation.id, cookie, consumers)


def test_channels_call_is_the_one_the_override_replaces():
    """The override repeats these steps without a channel layer, and awaits `receive` in
    its own task instead of `await_many_dispatch`'s. Whatever else channels' `__call__`
    comes to do would be skipped: read it if this fails, then port it or drop the override.
    """
    function = ast.parse(textwrap.dedent(inspect.getsource(AsyncConsumer.__call__))).body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    body = function.body[1:] if ast.get_docstring(function) else function.body
    assert [ast.unparse(statement) for statement in body] == [
        "self.scope = scope",
        "self.channel_layer = get_channel_layer(self.channel_layer_alias)",
        "if self.channel_layer is not None:\n"
        "    self.channel_name = await self.channel_layer.new_channel()\n"
        "    self.channel_receive = functools.partial("
        "self.channel_layer.receive, self.channel_name)",
        "if self._sync:\n"
        "    self.base_send = async_to_sync(send)\n"
        "else:\n"
        "    self.base_send = send",
        "try:\n"
        "    if self.channel_layer is not None:\n"
        "        await await_many_dispatch([receive, self.channel_receive], self.dispatch)\n"
        "    else:\n"
        "        await await_many_dispatch([receive], self.dispatch)\n"
        "except StopConsumer:\n"
        "    pass",
    ]
    # The override is for a consumer without a channel layer only.
    assert ConversationConsumer.channel_layer_alias is None


# --- dispatch ----------------------------------------------------------------------------


@pytest.fixture
def stale_connection_checks(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Each time channels' `dispatch` would take its trip to close stale connections."""
    calls: list[None] = []
    trip = channels_consumer.aclose_old_connections

    async def counted() -> None:
        calls.append(None)
        await trip()

    monkeypatch.setattr(channels_consumer, "aclose_old_connections", counted)
    return calls


async def test_a_frame_takes_no_trip_to_the_orm_thread(
    user, conversation, login_cookie, stale_connection_checks
):
    socket = ChatSocket(conversation.id, cookie=await login_cookie(user))
    await socket.connect()
    before = len(stale_connection_checks)
    await socket.send(type="nonsense")  # answered without a database step
    assert (await socket.receive())["code"] == "bad_request"
    assert len(stale_connection_checks) == before
    await socket.close()


async def test_channels_dispatch_takes_one_trip_per_frame(
    user, conversation, login_cookie, stale_connection_checks, monkeypatch
):
    """What the override saves. If channels stops making the trip, drop the override."""
    monkeypatch.delattr(ConversationConsumer, "dispatch")
    socket = ChatSocket(conversation.id, cookie=await login_cookie(user))
    await socket.connect()
    before = len(stale_connection_checks)
    await socket.send(type="nonsense")
    assert (await socket.receive())["code"] == "bad_request"
    assert len(stale_connection_checks) == before + 1
    await socket.close()


def test_channels_dispatch_is_the_one_the_override_replaces():
    """The override is channels' `dispatch` less its `aclose_old_connections()`: whatever
    else channels comes to do there would be skipped. Read it if this fails."""
    function = ast.parse(textwrap.dedent(inspect.getsource(AsyncConsumer.dispatch))).body[0]
    assert isinstance(function, ast.AsyncFunctionDef)
    body = function.body[1:] if ast.get_docstring(function) else function.body
    assert [ast.unparse(statement) for statement in body] == [
        "handler = getattr(self, get_handler_name(message), None)",
        "if handler:\n"
        "    await aclose_old_connections()\n"
        "    await handler(message)\n"
        "else:\n"
        "    raise ValueError('No handler for message type %s' % message['type'])",
    ]
