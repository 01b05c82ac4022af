"""`chat.outbox`: a send that has to wait holds up its own socket only, in order, and a
socket that falls too far behind gets its close and nothing more. The sends here wait on
a gate, as a server's send waits for its client to read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat.outbox import Outbox

CLOSE = {"type": "websocket.close", "code": 4408}


class Client:
    """A server's send for one client: waits while the gate is shut, records what went out."""

    def __init__(self, *, open_gate: bool = True) -> None:
        self.received: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()

    async def send(self, message: dict[str, Any]) -> None:
        if not self.gate.is_set():
            await self.gate.wait()
        self.received.append(message)

    def texts(self) -> list[str]:
        return [m.get("text", "close") for m in self.received]


def frame(n: int) -> dict[str, Any]:
    return {"type": "websocket.send", "text": str(n)}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_send_that_does_not_wait_is_done_at_once_without_a_task():
    client = Client()
    outbox = Outbox(client.send, CLOSE)
    tasks = len(asyncio.all_tasks())
    for n in range(3):
        assert outbox.put(frame(n))
        assert client.texts()[-1] == str(n)  # sent inside `put`
    assert len(asyncio.all_tasks()) == tasks
    assert outbox.backlog == 0


async def test_a_slow_client_holds_up_only_its_own_socket_and_gets_everything_in_order():
    slow, quick = Client(open_gate=False), Client()
    slow_box, quick_box = Outbox(slow.send, CLOSE), Outbox(quick.send, CLOSE)
    for n in range(5):
        slow_box.put(frame(n))
        quick_box.put(frame(n))
    assert quick.texts() == ["0", "1", "2", "3", "4"]
    assert slow.texts() == []
    assert slow_box.backlog == 4  # behind the send in flight
    await settle()  # the send in flight waits in its own task now, not in `put`
    assert slow.texts() == []

    slow.gate.set()
    await settle()
    assert slow.texts() == ["0", "1", "2", "3", "4"]
    assert slow_box.backlog == 0
    # Caught up: sends go straight out again.
    slow_box.put(frame(5))
    assert slow.texts()[-1] == "5"


async def test_a_client_too_far_behind_gets_its_close_and_nothing_more(settings):
    settings.CHAT_SOCKET_BACKLOG = 3
    slow = Client(open_gate=False)
    outbox = Outbox(slow.send, CLOSE)
    for n in range(4):
        assert outbox.put(frame(n))  # one in flight, three queued
    assert not outbox.put(frame(4))  # the fourth in the queue is one too many
    await settle()
    assert not outbox.put(frame(5))
    slow.gate.set()
    await settle()
    # What was in flight goes out; what waited is dropped for the close.
    assert slow.texts() == ["0", "close"]


async def test_a_send_that_fails_after_waiting_drops_what_waited():
    class Gone(Exception):
        pass

    gate = asyncio.Event()
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        if not gate.is_set():
            await gate.wait()
            raise Gone  # the client went away meanwhile
        sent.append(message["text"])

    outbox = Outbox(send, CLOSE)
    outbox.put(frame(0))
    outbox.put(frame(1))
    await settle()
    gate.set()
    await settle()
    assert sent == []  # the client is gone: what waited for it has no one to go to
    assert outbox.backlog == 0
    outbox.put(frame(2))  # and the outbox is not stuck
    assert sent == ["2"]


async def test_a_send_that_fails_at_once_raises_to_the_caller():
    async def send(message: dict[str, Any]) -> None:
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        Outbox(send, CLOSE).put(frame(0))
