"""Server-sent events: a conversation's frames streamed to one HTTP client.

An `EventQueue` is a watcher of the chat service (like a websocket) that queues each
frame; `event_stream` answers with them as SSE, the same JSON as the websocket's frames:
`event:` is the frame's type, `data:` the frame, a delta has `id: <seq>` (what the client
sends back as `Last-Event-ID` to reattach). The stream ends with the frame that `last`
accepts. A client that goes away only stops watching: the reply goes on and is saved.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Callable

from django.http import StreamingHttpResponse

from chat.chats import Attachment
from chat.watchers import Frame

CONTENT_TYPE = "text/event-stream"
# A comment line after this much silence keeps proxies from closing an idle stream.
KEEP_ALIVE_SECONDS = 15.0
KEEP_ALIVE = b": keep-alive\n\n"

FrameTest = Callable[[Frame], bool]

# What each frame type holds besides `type` (README, "Websocket protocol").
FRAME_FIELDS = {
    "state": ["conversation", "messages", "streaming"],
    "message": ["message"],
    "delta": ["message_id", "seq", "text"],
    "done": ["message_id", "status", "content", "usage", "error"],
    "removed": ["message_id"],
    "conversation": ["conversation"],
    "deleted": ["conversation_id"],
    "error": ["code", "detail"],
}

# One event, for the OpenAPI document: its `data` is the frame's JSON.
EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": list(FRAME_FIELDS)},
        "id": {"type": "string", "description": "A delta's `seq`, for `Last-Event-ID`."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["type", *fields],
                        "properties": {"type": {"const": kind}},
                    }
                    for kind, fields in FRAME_FIELDS.items()
                ]
            },
        },
    },
}


class EventQueue:
    """Watches a conversation for one SSE response: its frames wait here to be sent."""

    def __init__(self) -> None:
        self._frames: asyncio.Queue[tuple[Frame, str]] = asyncio.Queue()
        self.session_ended = False

    async def deliver(self, frame: Frame, text: str) -> None:
        self._frames.put_nowait((frame, text))

    async def end_session(self) -> None:
        """Its session has ended (a logout, an expiry): one `error` event, then the end."""
        frame = {"type": "error", "code": "unauthorized", "detail": "Your session has ended."}
        self.session_ended = True
        self._frames.put_nowait((frame, json.dumps(frame)))

    def pending(self) -> int:
        return self._frames.qsize()

    async def next(self) -> tuple[Frame, str]:
        return await self._frames.get()


def wants_events(accept: str) -> bool:
    """Whether an `Accept` header asks for an event stream."""
    return CONTENT_TYPE in accept.lower()


def event_stream(
    queue: EventQueue, attachment: Attachment | None, last: FrameTest
) -> StreamingHttpResponse:
    """The response that streams the queue's frames up to and including `last`, then
    detaches. With no attachment, only the frames already queued are sent."""
    response = StreamingHttpResponse(_events(queue, attachment, last), content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    if attachment is not None:
        # A response that is never sent (its client left before) never starts its
        # generator, so the generator's `finally` cannot detach: detach once it is dropped.
        weakref.finalize(response, attachment.detach)
    return response


def done_of(message_id: str) -> FrameTest:
    """The `done` frame of one reply."""
    return lambda frame: frame["type"] == "done" and frame["message_id"] == message_id


def any_done(frame: Frame) -> bool:
    return bool(frame["type"] == "done")


async def _events(
    queue: EventQueue, attachment: Attachment | None, last: FrameTest
) -> AsyncIterator[bytes]:
    try:
        while attachment is not None or queue.pending():
            try:
                async with asyncio.timeout(KEEP_ALIVE_SECONDS):
                    frame, text = await queue.next()
            except TimeoutError:
                yield KEEP_ALIVE
                continue
            yield encode(frame, text)
            if last(frame) or queue.session_ended:
                return
    finally:
        # Also when the client went away (the handler cancels or closes this generator).
        if attachment is not None:
            attachment.detach()


def encode(frame: Frame, text: str) -> bytes:
    """One event; `text` is the frame's JSON, on one line."""
    lines = [f"event: {frame['type']}"]
    if frame["type"] == "delta":
        lines.append(f"id: {frame['seq']}")
    lines.append(f"data: {text}")
    return ("\n".join(lines) + "\n\n").encode()
