"""Generated websocket frames against a live daphne: every frame gets protocol frames back
(an `error` frame for bad input, the usual answer for good input), the socket stays open,
the server logs no error, and another user's chats streaming meanwhile all complete.

Frames (tests/fuzzed_frames.py) go in batches, one batch per hypothesis example, on one
socket; after each frame the test sends a frame of an unknown type that names a fresh id
(a barrier), so that the answers of each frame are the ones that come before its
barrier's `error`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import given

from chat.models import Message
from tests.fuzzed_frames import (
    DAPHNE_MAX_MESSAGE,
    Expected,
    Frame,
    Text,
    assert_protocol_frame,
    batches,
    decode,
    expected,
    render,
    shorten,
)
from tests.fuzzing import (
    BYSTANDER_MODEL,
    BYSTANDER_REPLY,
    FRAME_TIMEOUT,
    Bystanders,
    ClientLoop,
    ServerLog,
    chats_meanwhile,
    fuzz_server,
    fuzz_settings,
    login_cookie,
    next_frame,
    report,
)
from tests.live_daphne import LiveServer
from tests.llm_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)


# --- The fuzzed socket -----------------------------------------------------------------------


@dataclass
class FuzzedSocket:
    """One user's socket on their conversation, sent batches of frames; it reopens after
    a failure closed it, so that the examples after it still run."""

    url: str
    cookie: str
    conversation_id: Any
    sent: int = 0
    oversized: int = 0
    known: list[str] = field(default_factory=list)  # the user messages seen, oldest first

    async def open(self) -> None:
        self.http = aiohttp.ClientSession(headers={"Cookie": self.cookie})
        await self._connect()

    async def _connect(self) -> None:
        path = f"/ws/conversations/{self.conversation_id}/"
        self.socket = await self.http.ws_connect(
            self.url.replace("http", "ws", 1) + path, origin=self.url, max_msg_size=0
        )
        assert (await next_frame(self.socket))["type"] == "state"

    async def close(self) -> None:
        await self.socket.close()
        await self.http.close()

    async def exchange(self, batch: list[Frame]) -> None:
        """Send the batch, each frame followed by a barrier; check each frame's answers."""
        if self.socket.closed:
            await self._connect()
        try:
            await self._exchange(batch)
        except BaseException:
            # Its answers would be read as the next batch's: start that one on a new socket.
            await self.socket.close()
            raise

    async def _exchange(self, batch: list[Frame]) -> None:
        sent = []
        for frame in batch:
            data, barrier = render(frame, self.known), uuid.uuid4().hex
            if len(data if isinstance(data, bytes) else data.encode()) > DAPHNE_MAX_MESSAGE:
                self.oversized += 1  # refused by the websocket protocol itself: tested apart
                continue
            if isinstance(data, bytes):
                await self.socket.send_bytes(data)
            else:
                await self.socket.send_str(data)
            await self.socket.send_json({"type": f"barrier-{barrier}"})
            sent.append((frame, data, barrier))
        for frame, data, barrier in sent:
            try:
                answers = await self.answers(barrier)
            except AssertionError as failure:
                raise AssertionError(f"after {shorten(frame)}: {failure}") from None
            self.check(frame, expected(decode(data)), answers)
            self.sent += 1

    async def answers(self, barrier: str) -> list[dict[str, Any]]:
        """The frames that come before the answer to `barrier`."""
        answers: list[dict[str, Any]] = []
        while True:
            answer = await next_frame(self.socket)
            if answer.get("type") == "error" and barrier in answer.get("detail", ""):
                return answers
            assert_protocol_frame(answer)
            answers.append(answer)

    def check(self, frame: Frame, expectation: Expected, answers: list[dict[str, Any]]) -> None:
        errors = [answer["code"] for answer in answers if answer["type"] == "error"]
        posted = [answer["message"] for answer in answers if answer["type"] == "message"]
        self.known += [message["id"] for message in posted if message["role"] == "user"]
        code = errors[0] if errors else None
        assert len(errors) <= 1 and code in expectation.codes, (
            f"{shorten(frame)} was answered {shorten(answers)}; "
            f"expected an error among {sorted(map(str, expectation.codes))}"
        )
        if expectation.posts and code is None:
            assert posted, f"{shorten(frame)} was served, but no message came: {answers}"


# --- Fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daphne(django_db_setup: None, llm_server: Any) -> Iterator[LiveServer]:
    with fuzz_server(llm_server) as server:
        yield server


@pytest.fixture
def clients() -> Iterator[ClientLoop]:
    with ClientLoop() as loop:
        yield loop


@pytest.fixture
def bystanders(
    daphne: LiveServer,
    clients: ClientLoop,
    llm_server: Any,
    other_user: Any,
    make_conversation: Any,
) -> Iterator[Bystanders]:
    """Another user's chats, going on while the test runs."""
    llm_server.reset()
    llm_server.behaviour = Behaviour(tokens=3)  # the fuzzed user's replies
    llm_server.models[BYSTANDER_MODEL] = BYSTANDER_REPLY
    conversations = [make_conversation(other_user, model=BYSTANDER_MODEL) for _ in range(3)]
    with chats_meanwhile(daphne, clients, other_user, [c.pk for c in conversations]) as chats:
        yield chats


# --- Tests -----------------------------------------------------------------------------------


def test_generated_frames_are_answered_and_hold_up_nobody(
    daphne: LiveServer, clients: ClientLoop, bystanders: Bystanders, user: Any, conversation: Any
) -> None:
    log = ServerLog(daphne.log)
    socket = FuzzedSocket(daphne.url, login_cookie(user), conversation.pk)
    clients.run(socket.open())
    started = time.monotonic()

    @given(batch=batches)
    @fuzz_settings(examples=300)
    def exchange(batch: list[Frame]) -> None:
        clients.run(socket.exchange(batch))
        log.assert_clean()
        bystanders.assert_well()

    try:
        exchange()
    finally:
        clients.run(socket.close())
    seconds = time.monotonic() - started
    clients.run(bystanders.finish())
    bystanders.assert_well()
    assert bystanders.completed >= len(bystanders.conversation_ids)
    # Every reply the fuzz started has ended, and said so.
    deadline = time.monotonic() + 30
    while Message.objects.filter(status=Message.Status.STREAMING).exists():
        assert time.monotonic() < deadline, "replies still streaming 30 s after the fuzz"
        time.sleep(0.1)
    log.assert_clean()
    report(
        "websocket frames",
        frames=socket.sent,
        seconds=round(seconds, 1),
        bystander_chats=bystanders.completed,
    )


def test_frames_the_websocket_protocol_forbids_end_only_their_socket(
    daphne: LiveServer, clients: ClientLoop, bystanders: Bystanders, user: Any, conversation: Any
) -> None:
    """Text that is not UTF-8, or a message over daphne's size limit, breaks the websocket
    protocol, which then fails the connection (RFC 6455): daphne drops that socket (the
    client sees 1006), logging no error, and the same user's other tab and the other
    user's chats go on."""
    log = ServerLog(daphne.log)
    cookie = login_cookie(user)
    tab = FuzzedSocket(daphne.url, cookie, conversation.pk)
    clients.run(tab.open())
    try:
        for data, opcode in [
            (b"\xff\xfe{}", aiohttp.WSMsgType.TEXT),
            ('{"type": "send", "content": "caf\xe9"}'.encode("latin-1"), aiohttp.WSMsgType.TEXT),
            (b"x" * (DAPHNE_MAX_MESSAGE + 1), aiohttp.WSMsgType.TEXT),
            (b"x" * (DAPHNE_MAX_MESSAGE + 1), aiohttp.WSMsgType.BINARY),
        ]:
            ended = clients.run(ending(daphne, cookie, conversation.pk, data, opcode))
            assert ended == 1006, f"{shorten(data)} ended its socket with {ended}"
        clients.run(tab.exchange([Text({"type": "send", "content": "Still here?"})]))
        done = clients.run(reply_end(tab))
        assert done["status"] == "complete", done
    finally:
        clients.run(tab.close())
    bystanders.assert_well()
    log.assert_clean()


async def ending(
    daphne: LiveServer, cookie: str, conversation_id: Any, data: bytes, opcode: aiohttp.WSMsgType
) -> int | None:
    """How a new socket that sends `data` in one frame is ended: its close code."""
    socket = FuzzedSocket(daphne.url, cookie, conversation_id)
    await socket.open()
    try:
        await socket.socket.send_frame(data, opcode)
        message = await socket.socket.receive(timeout=FRAME_TIMEOUT)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        return socket.socket.close_code
    finally:
        await socket.close()


async def reply_end(tab: FuzzedSocket) -> dict[str, Any]:
    """The `done` frame of the reply running on the tab's conversation."""
    while (frame := await next_frame(tab.socket))["type"] != "done":
        assert_protocol_frame(frame)
    return frame
