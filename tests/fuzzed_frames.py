"""Websocket frames as hypothesis draws them, and what the protocol promises for each
(README, "Websocket protocol"): the fuzz of tests/test_fuzz_socket.py.

Long and deep values stay placeholders until a frame is sent, so that a failing example
prints short.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from hypothesis import strategies as st

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


# --- On the wire ------------------------------------------------------------------------------


def render(frame: Frame, known: list[str]) -> str | bytes:
    """The frame as it goes on the wire; `known`: the ids of user messages seen so far."""
    if isinstance(frame, Binary):
        return frame.data
    if isinstance(frame, Verbatim):
        return frame.text
    raws: dict[str, str] = {}
    value = fill(frame.value, known, raws)
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: spelled as an escape
        text = json.dumps(value)
    for marker, raw in raws.items():
        text = text.replace(json.dumps(marker), raw)
    return text


def fill(value: Any, known: list[str], raws: dict[str, str]) -> Any:
    """`value` with its placeholders filled in; JSON text that json.dumps cannot write goes
    into `raws`, under the marker that stands for it."""
    if isinstance(value, Repeat):
        return value.text * value.times
    if isinstance(value, Known):
        return known[value.index % len(known)] if known else str(uuid.uuid4())
    if isinstance(value, Raw):
        marker = f"raw-{uuid.uuid4().hex}"
        raws[marker] = value.json()
        return marker
    if isinstance(value, dict):
        return {key: fill(item, known, raws) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, known, raws) for item in value]
    return value
