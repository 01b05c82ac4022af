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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from django.conf import settings
from django.http import StreamingHttpResponse

from chat.chats import Attachment, Started, service
from chat.watchers import Frame

CONTENT_TYPE = "text/event-stream"
# A comment line after this much silence keeps proxies from closing an idle stream.
KEEP_ALIVE_SECONDS = 15.0
KEEP_ALIVE = b": keep-alive\n\n"
# What every event stream answers with besides its events (and a proxy must pass on).
HEADERS = {
    "Content-Type": CONTENT_TYPE,
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}

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
        # None: the client has gone away.
        self._frames: asyncio.Queue[tuple[Frame, str] | None] = asyncio.Queue()
        # The last frame of a stream whose session ended (the frames before it go first).
        self.end_frame: Frame | None = None

    async def deliver(self, frame: Frame, text: str) -> None:
        if self.end_frame is not None:
            return  # ending: nothing goes after its last event
        if self._frames.qsize() >= settings.CHAT_SOCKET_BACKLOG:
            # A client too slow to read (the server holds its sends, `chat.outbox`): what
            # waits is dropped, and the stream ends now; opened again, it starts afresh.
            while not self._frames.empty():
                self._frames.get_nowait()
            detail = "This stream fell too far behind: open it again to catch up."
            self._end({"type": "error", "code": "too_slow", "detail": detail})
            return
        self._frames.put_nowait((frame, text))

    async def end_session(self) -> None:
        """What let it in has ended (a logout, an expired session, a revoked token): one
        `error` event after the frames already queued, then the end."""
        detail = "Your session or token has ended: log in again, or use a live token."
        self._end({"type": "error", "code": "unauthorized", "detail": detail})

    def _end(self, frame: Frame) -> None:
        self.end_frame = frame
        self._frames.put_nowait((frame, json.dumps(frame)))

    def client_left(self) -> None:
        self._frames.put_nowait(None)

    def pending(self) -> int:
        return self._frames.qsize()

    async def next(self) -> tuple[Frame, str] | None:
        return await self._frames.get()


@dataclass
class Stream:
    """What one SSE response sends: the queue's frames up to the one `last` accepts, while
    `attachment` keeps the queue watching (with none, only the frames already queued)."""

    queue: EventQueue
    attachment: Attachment | None
    last: FrameTest


async def reply_stream(
    user_id: int,
    conversation_id: UUID,
    session_key: str | None,
    start: Callable[[], Awaitable[Started]],
) -> Stream:
    """The stream of the reply that `start` starts (a send, a regenerate), watched from
    before it starts so that no frame is missed. A retried send that posted nothing
    follows the reply that runs, if one does. Refusals are raised before any event."""
    queue = EventQueue()
    attachment = service().watch(conversation_id, queue, session_key=session_key)
    try:
        started = await start()
    except BaseException:
        attachment.detach()
        raise
    if started.reply is None or started.assistant_message is None:
        attachment.detach()
        return await follow_stream(user_id, conversation_id, None, session_key)
    return Stream(queue, attachment, done_of(str(started.assistant_message.id)))


async def follow_stream(
    user_id: int, conversation_id: UUID, after: int | None, session_key: str | None
) -> Stream:
    """Reattach to the running reply after delta `after` (chat.chats.ChatService.follow)."""
    queue = EventQueue()
    attachment = await service().follow(
        user_id, conversation_id, queue, after=after, session_key=session_key
    )
    return Stream(queue, attachment, any_done)


def wants_events(accept: str) -> bool:
    """Whether an `Accept` header asks for an event stream."""
    return CONTENT_TYPE in accept.lower()


def event_stream(stream: Stream) -> StreamingHttpResponse:
    """Django's response that sends the stream."""
    response = StreamingHttpResponse(events(stream))
    for name, value in HEADERS.items():
        response[name] = value
    if stream.attachment is not None:
        # A response that is never sent (its client left before) never starts its
        # generator, so the generator's `finally` cannot detach: detach once it is dropped.
        weakref.finalize(response, stream.attachment.detach)
    return response


def done_of(message_id: str) -> FrameTest:
    """The `done` frame of one reply."""
    return lambda frame: frame["type"] == "done" and frame["message_id"] == message_id


def any_done(frame: Frame) -> bool:
    return bool(frame["type"] == "done")


async def events(stream: Stream) -> AsyncIterator[bytes]:
    """The stream's events, then it detaches; a keep-alive comment after each silence."""
    queue, attachment = stream.queue, stream.attachment
    try:
        while attachment is not None or queue.pending():
            try:
                async with asyncio.timeout(KEEP_ALIVE_SECONDS):
                    queued = await queue.next()
            except TimeoutError:
                yield KEEP_ALIVE
                continue
            if queued is None:
                return
            frame, text = queued
            yield encode(frame, text)
            if stream.last(frame) or frame is queue.end_frame:
                return
    finally:
        # Also when the client went away (Django cancels or closes this generator).
        if attachment is not None:
            attachment.detach()


def encode(frame: Frame, text: str) -> bytes:
    """One event; `text` is the frame's JSON, on one line."""
    lines = [f"event: {frame['type']}"]
    if frame["type"] == "delta":
        lines.append(f"id: {frame['seq']}")
    lines.append(f"data: {text}")
    return ("\n".join(lines) + "\n\n").encode()
