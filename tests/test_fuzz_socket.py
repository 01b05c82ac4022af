"""Generated websocket frames against a live daphne: every frame gets protocol frames back
(an `error` frame for bad input, the usual answer for good input), the socket stays open,
the server logs no error, and another user's chats streaming meanwhile all complete.

Frames go in batches, one batch per hypothesis example, on one socket; after each frame
the test sends a frame of an unknown type that names a fresh id (a barrier), so that the
answers of each frame are the ones that come before its barrier's `error`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from django.conf import settings
from hypothesis import given
from hypothesis import strategies as st

from chat.models import Message
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

FRAMES_PER_BATCH = 60
LIMIT = settings.CHAT_MAX_INPUT_CHARS
DAPHNE_MAX_MESSAGE = 1024 * 1024  # bytes: daphne's default --websocket-max-message-size

# What the server may send, and what each kind of frame must hold (README, "Websocket
# protocol"); `state` comes only first.
SERVER_FRAMES = {
    "message": {"message"},
    "delta": {"message_id", "seq", "text"},
    "done": {"message_id", "status", "content", "usage", "error"},
    "removed": {"message_id"},
    "conversation": {"conversation"},
    "deleted": {"conversation_id"},
    "error": {"code", "detail"},
}
ERROR_CODES = {"bad_request", "too_long", "rate_limited", "quota_exceeded", "busy", "not_found"}
DONE_STATUSES = {"complete", "stopped", "failed", "interrupted"}


# --- Frames, as hypothesis draws them ---------------------------------------------------------
# Long and deep values stay placeholders until sent, so that a failing example prints short.


@dataclass(frozen=True)
class Repeat:
    """A long text: `text` `times` over."""

    text: str
    times: int

    def __repr__(self) -> str:
        return f"Repeat({self.text!r} * {self.times})"


@dataclass(frozen=True)
class Raw:
    """JSON text that json.dumps cannot write: nesting `depth` deep, or a number `digits` long."""

    depth: int = 0
    digits: int = 0

    def json(self) -> str:
        return "[" * self.depth + "]" * self.depth if self.depth else "9" * self.digits


@dataclass(frozen=True)
class Known:
    """The id of the `index`th user message this socket has seen (a random id before any)."""

    index: int


@dataclass(frozen=True)
class Text:
    """A text frame holding `value` as JSON (placeholders filled in when it is sent)."""

    value: Any


@dataclass(frozen=True)
class Verbatim:
    """A text frame sent as it is: anything, JSON or not."""

    text: str


@dataclass(frozen=True)
class Binary:
    data: bytes


Frame = Text | Verbatim | Binary

KINDS = ("send", "stop", "regenerate", "edit")
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
wild = (
    json_values
    | st.builds(Raw, depth=st.integers(3_000, 50_000))
    | st.builds(Raw, digits=st.integers(5_000, 20_000))
)
# Every character JSON can spell, lone surrogates and NUL included.
any_text = st.text(st.characters(codec=None, categories=None), max_size=40)
contents = st.one_of(
    any_text,
    st.sampled_from(["", " ", "\n\t\u3000", "\x00", "\ud800", "Hello", "<b>x</b>"]),
    st.builds(
        Repeat,
        st.sampled_from(["x", " ", "\U0001f600", "\x00"]),
        st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1, 4 * LIMIT]),
    ),
    st.just(Repeat("x", 40 * LIMIT)),
    wild,
)
uuids = st.uuids().map(str)
uuid_spellings = st.uuids().flatmap(
    lambda u: st.sampled_from([u.hex, u.urn, f"{{{u}}}", str(u).upper(), str(u)[:-1]])
)
RETRIED = [str(uuid.UUID(int=n)) for n in range(1, 4)]  # the same send, sent again
client_msg_ids = st.one_of(uuids, st.sampled_from(RETRIED), uuid_spellings, any_text, wild)
message_ids = st.one_of(st.builds(Known, st.integers(0, 20)), uuids, uuid_spellings, wild)
kinds = st.one_of(st.sampled_from(KINDS), st.text(max_size=12), json_values)
extras = st.dictionaries(st.text(max_size=12), wild, max_size=3)


def protocol_frame(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A frame of `kind` whose `fields` may be there or not, with unknown fields beside."""
    known = st.fixed_dictionaries({"type": st.just(kind)}, optional=fields)
    return st.builds(lambda extra, frame: {**extra, **frame}, extras, known)


protocol_frames = st.one_of(
    protocol_frame("send", content=contents, client_msg_id=client_msg_ids),
    protocol_frame("stop"),
    protocol_frame("regenerate"),
    protocol_frame("edit", message_id=message_ids, content=contents),
)
# Frames as a client would send them, so that replies start, stop and are redone.
served_frames = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("send"), "content": any_text},
        optional={"client_msg_id": uuids | st.sampled_from(RETRIED)},
    ),
    st.just({"type": "stop"}),
    st.just({"type": "regenerate"}),
    st.fixed_dictionaries(
        {
            "type": st.just("edit"),
            "message_id": st.builds(Known, st.integers(0, 20)),
            "content": any_text,
        }
    ),
)
frames: st.SearchStrategy[Frame] = st.one_of(
    # Each of these four, one frame in five: replies start often enough to be in the way.
    served_frames.map(Text),
    served_frames.map(Text),
    protocol_frames.map(Text),
    protocol_frames.map(Text),
    # A protocol frame with its type changed: unknown, of a wrong type, or another kind's.
    st.builds(lambda frame, kind: Text({**frame, "type": kind}), protocol_frames, kinds),
    st.builds(Text, wild),  # JSON that is no object
    st.builds(Verbatim, st.text(max_size=60)),  # anything
    protocol_frames.map(lambda frame: Verbatim(json.dumps(frame, default=repr)[:-1])),  # cut
    st.builds(Binary, st.binary(max_size=60)),
    protocol_frames.map(lambda frame: Binary(json.dumps(frame, default=repr).encode())),
)
batches = st.lists(frames, min_size=10, max_size=FRAMES_PER_BATCH)


# --- What the server must answer ----------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The error codes a frame may get (None: no error), and whether, served, it posts a
    message, which every tab (this one included) is sent before the next frame is read."""

    codes: frozenset[str | None]
    posts: bool = False


REFUSED = Expected(frozenset({"bad_request"}))
LIMITED = {"rate_limited", "quota_exceeded"}


def expected(decoded: Any) -> Expected:
    """What the README's protocol promises for a frame that decodes to `decoded`."""
    if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
        return REFUSED
    kind, content = decoded["type"], decoded.get("content")
    if kind == "stop":
        return Expected(frozenset({None}))
    if kind == "regenerate":  # bad_request: the last message is no reply
        return Expected(frozenset({None, "busy", "bad_request", *LIMITED}), posts=True)
    if kind == "send":
        msg_id = decoded.get("client_msg_id")
        if not isinstance(content, str) or not (msg_id is None or is_uuid(msg_id)):
            return REFUSED
        return refused_content(content) or Expected(frozenset({None, "busy", *LIMITED}), True)
    if kind == "edit":
        if not is_uuid(decoded.get("message_id")) or not isinstance(content, str):
            return REFUSED
        return refused_content(content) or Expected(
            frozenset({None, "busy", "not_found", *LIMITED}), posts=True
        )
    return REFUSED


def refused_content(content: str) -> Expected | None:
    if not content.strip():
        return REFUSED
    if len(content) > LIMIT:
        return Expected(frozenset({"too_long"}))
    return None


def is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def decode(data: str | bytes) -> Any:
    """The JSON value of a text frame; None for anything else."""
    if isinstance(data, bytes):
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def assert_protocol_frame(frame: dict[str, Any]) -> None:
    kind = frame.get("type")
    assert kind in SERVER_FRAMES, f"not a frame of the protocol: {shorten(frame)}"
    assert SERVER_FRAMES[kind] <= frame.keys(), f"fields missing: {shorten(frame)}"
    if kind == "error":
        assert frame["code"] in ERROR_CODES and isinstance(frame["detail"], str), frame
    if kind == "done":
        assert frame["status"] in DONE_STATUSES, frame
    if kind == "delta":
        assert isinstance(frame["seq"], int) and isinstance(frame["text"], str), frame


def shorten(value: Any, size: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= size else f"{text[:size]}... ({len(text)} characters)"


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
            data, barrier = self.render(frame), uuid.uuid4().hex
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

    def render(self, frame: Frame) -> str | bytes:
        """The frame as it goes on the wire."""
        if isinstance(frame, Binary):
            return frame.data
        if isinstance(frame, Verbatim):
            return frame.text
        raws: dict[str, str] = {}
        value = self.fill(frame.value, raws)
        text = json.dumps(value, ensure_ascii=False)
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate: spelled as an escape
            text = json.dumps(value)
        for marker, raw in raws.items():
            text = text.replace(json.dumps(marker), raw)
        return text

    def fill(self, value: Any, raws: dict[str, str]) -> Any:
        if isinstance(value, Repeat):
            return value.text * value.times
        if isinstance(value, Known):
            known = self.known[value.index % len(self.known)] if self.known else None
            return known or str(uuid.uuid4())
        if isinstance(value, Raw):
            marker = f"raw-{uuid.uuid4().hex}"
            raws[marker] = value.json()
            return marker
        if isinstance(value, dict):
            return {key: self.fill(item, raws) for key, item in value.items()}
        if isinstance(value, list):
            return [self.fill(item, raws) for item in value]
        return value


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
