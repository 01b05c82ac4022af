"""The websocket of one conversation: who is asking, frames in, events out.

Every step is the chat service's (`chat.chats`); the consumer only translates frames into
its calls, and its refusals into `error` frames.
"""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from typing import Any
from uuid import UUID

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.http.cookie import parse_cookie

from chat import refusals
from chat.chats import Attachment, Started, service
from chat.outbox import Outbox
from chat.refusals import Refused
from chat.serializers import message_json
from chat.watchers import Frame

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429
# Fell more than CHAT_SOCKET_BACKLOG frames behind (`chat.outbox`): reconnect to resync.
CLOSE_TOO_SLOW = 4408


class ConversationConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Speaks the websocket protocol (README, "Websocket protocol") for one conversation."""

    # No channel per socket: frames reach sockets through the chat service's watchers, and
    # a channel would cost every open socket a waiting task and a queue (and the in-memory
    # layer a scan of all of them on every message). `__call__` below relies on it.
    channel_layer_alias = None

    scope: dict[str, Any]
    conversation_id: UUID
    user_id: int
    attachment: Attachment | None = None
    # Every frame after `accept` goes out through it, in order.
    outbox: Outbox

    # --- Connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Accept only the owner; `state` first, then every frame after it."""
        await self.accept()
        self.outbox = Outbox(self.base_send, {"type": "websocket.close", "code": CLOSE_TOO_SLOW})
        session_key = session_cookie(self.scope)
        if session_key is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        # Every frame checks ownership by id; the headers would only weigh on each of
        # thousands of idle sockets.
        self.scope = {"type": self.scope["type"], "path": self.scope["path"]}
        try:
            user_id, self.attachment = await service().open(
                session_key, self.conversation_id, self
            )
        except Refused:
            await self.close(code=CLOSE_TOO_MANY)
            return
        if user_id is None or self.attachment is None:
            await self.close(code=CLOSE_UNAUTHENTICATED if user_id is None else CLOSE_NOT_FOUND)
            return
        self.user_id = user_id

    async def end_session(self) -> None:
        """Its session has ended (a logout): close as a socket that is not logged in."""
        self.stop_watching()
        self.outbox.put({"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED})

    async def disconnect(self, code: int) -> None:
        """Stop watching; a running reply goes on and is saved (a disconnect is not a stop)."""
        self.stop_watching()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """As channels' `AsyncConsumer.__call__` without a channel layer: the socket's
        messages are awaited in this task, not in a task and an `asyncio.wait` of their
        own, which every idle socket would hold."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        # Channels calls `disconnect` only for a clean close; a consumer that crashed or was
        # cancelled (daphne does that 10 s after the client left) must stop watching too.
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            self.stop_watching()

    def stop_watching(self) -> None:
        attachment, self.attachment = self.attachment, None
        if attachment is not None:
            attachment.detach()

    async def deliver(self, frame: Frame, text: str) -> None:
        """A frame for everyone watching this conversation; never waits for the client."""
        if not self.outbox.put({"type": "websocket.send", "text": text}):
            self.stop_watching()  # too far behind: closing, and resyncs when it reconnects

    async def dispatch(self, message: dict[str, Any]) -> None:
        """As channels' `AsyncConsumer.dispatch`, without its trip to the ORM thread to close
        stale connections before every message: each database step closes them itself
        (`persistence.db_step`). Measured, that trip costs a socket's set-up a third more
        CPU and stretches the longest gaps between frames (README, "How it stays fast");
        `tests/test_consumer_overrides.py` fails if channels' own changes."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- Frames in --------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Decode a frame; anything that is not a JSON object is answered, never fatal."""
        if self.attachment is None:
            return  # refused or closing: the frames of its close handshake are dropped
        try:
            content = json.loads(text_data) if text_data is not None else None
        except (ValueError, RecursionError):
            content = None
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.send_error("bad_request", "Send a JSON object with a 'type'.")
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        handler = {
            "send": self.on_send,
            "stop": self.on_stop,
            "regenerate": self.on_regenerate,
            "continue": self.on_continue,
            "edit": self.on_edit,
        }.get(content["type"])
        if handler is None:
            await self.send_error("bad_request", f"Unknown frame type {content['type']!r}.")
            return
        try:
            await handler(content)
        except Refused as refused:
            await self.send_error(refused.code, refused.detail)
        except Exception:
            # A failure of ours (the database gone, a bug): said, logged, the socket kept.
            logger.exception("serving a %r frame failed", content["type"])
            await self.send_error("internal_error", "Something went wrong; try again.")

    async def on_send(self, frame: dict[str, Any]) -> None:
        """Post a user message and start a reply; a retried `client_msg_id` posts nothing."""
        started = await service().send(
            self.user_id,
            self.conversation_id,
            _text(frame, "content"),
            _uuid(frame, "client_msg_id", required=False),
        )
        await self.answer_retry(started)

    async def on_stop(self, frame: dict[str, Any]) -> None:
        """Stop the running reply, if any; its `done` frame follows."""
        await service().stop(self.user_id, self.conversation_id)

    async def on_regenerate(self, frame: dict[str, Any]) -> None:
        """Replace the last reply with a new one."""
        await service().regenerate(self.user_id, self.conversation_id)

    async def on_continue(self, frame: dict[str, Any]) -> None:
        """Go on with the last reply where it was cut (`interrupted`), in the same message."""
        await service().continue_reply(self.user_id, self.conversation_id)

    async def on_edit(self, frame: dict[str, Any]) -> None:
        """Change a user message and answer it anew, dropping what came after it."""
        message_id = _uuid(frame, "message_id", required=True)
        assert message_id is not None
        await service().edit(
            self.user_id, self.conversation_id, message_id, _text(frame, "content")
        )

    async def answer_retry(self, started: Started) -> None:
        """A retried send stored nothing new: show its message again, to this socket."""
        if started.reply is None and started.user_message is not None:
            self.send_frame({"type": "message", "message": message_json(started.user_message)})

    async def send_error(self, code: str, detail: str) -> None:
        self.send_frame({"type": "error", "code": code, "detail": detail})

    def send_frame(self, frame: Frame) -> None:
        """A frame for this socket alone, after the frames already on their way to it."""
        self.outbox.put({"type": "websocket.send", "text": json.dumps(frame)})


def session_cookie(scope: dict[str, Any]) -> str | None:
    """The socket's session key, read from its cookie header as Django would: what channels'
    `AuthMiddlewareStack` does, without keeping the cookies, the session and the user in
    the scope of every open socket."""
    for name, value in scope["headers"]:
        if name == b"cookie":
            key = parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME)
            # Django's session keys are lowercase letters and digits; anything else (a NUL
            # that the database would refuse) is no session, answered without a query.
            return key if key and key.isascii() and key.isalnum() else None
    return None


def _text(frame: dict[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str):
        raise refusals.bad_request(f"'{key}' must be a non-empty string.")
    return value


def _uuid(frame: dict[str, Any], key: str, *, required: bool) -> UUID | None:
    value = frame.get(key)
    if value is None and not required:
        return None
    if isinstance(value, str):
        with suppress(ValueError):
            return UUID(value)
    raise refusals.bad_request(f"'{key}' must be a UUID.")
