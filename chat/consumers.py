"""The websocket of one conversation: checks who may watch it, turns frames into chat steps."""

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

from chat import crossprocess, logouts, persistence, replies, watchers
from chat.serializers import conversation_json, message_json

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class ConversationConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Speaks the protocol of DESIGN.md section 4 for one conversation."""

    # No channel per socket: frames reach sockets through `chat.watchers`, and a channel
    # would cost every open socket a waiting task and a queue (and the in-memory layer a
    # scan of all of them on every message). `__call__` below relies on it.
    channel_layer_alias = None

    scope: dict[str, Any]
    conversation_id: UUID
    user_id: int
    session_key: str
    # Frames that arrive while `state` is being built, sent after it.
    _held: list[tuple[dict[str, Any], str]] | None

    # --- Connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Accept only the owner; send `state`, then every frame after it."""
        await self.accept()
        session_key = session_cookie(self.scope)
        if session_key is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        # Every frame checks ownership by id; the headers would only weigh on each of
        # thousands of idle sockets.
        self.scope = {"type": self.scope["type"], "path": self.scope["path"]}
        # Watch before reading, holding frames: nothing sent meanwhile is missed.
        self._held = []
        watchers.watch(self.conversation_id, self)
        reply = replies.running(self.conversation_id)
        user_id, state = await persistence.open_conversation(
            session_key, self.conversation_id, reply_running=reply is not None
        )
        if user_id is None or state is None:
            watchers.unwatch(self.conversation_id, self)
            await self.close(code=CLOSE_UNAUTHENTICATED if user_id is None else CLOSE_NOT_FOUND)
            return
        self.user_id = user_id
        self.session_key = session_key
        logouts.opened(session_key, self)
        if crossprocess.enabled():
            await self.hear_of_logouts_elsewhere()
        await self.send_state(state)

    async def hear_of_logouts_elsewhere(self) -> None:
        try:
            await crossprocess.holding_sockets()
        except Exception:
            # The socket works; only a logout on another process cannot close it.
            logger.warning("the channel layer is unreachable", exc_info=True)

    async def end_session(self) -> None:
        """Its session has ended (a logout): close as a socket that is not logged in."""
        self.stop_watching()
        await self.close(code=CLOSE_UNAUTHENTICATED)

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
        if hasattr(self, "conversation_id"):
            watchers.unwatch(self.conversation_id, self)
        if hasattr(self, "session_key"):
            logouts.closed(self.session_key, self)

    async def send_state(self, state: persistence.State) -> None:
        reply = replies.running(self.conversation_id)
        streaming = reply.snapshot() if reply is not None else None
        await self.send_json(
            {
                "type": "state",
                "conversation": conversation_json(state.conversation),
                "messages": [message_json(m) for m in state.messages],
                "streaming": streaming,
            }
        )
        held, self._held = self._held or [], None
        for frame, text in held:
            if streaming and _already_in(frame, streaming):
                continue
            await self.send(text_data=text)

    async def deliver(self, frame: dict[str, Any], text: str) -> None:
        """A frame for everyone watching this conversation."""
        if self._held is not None:
            self._held.append((frame, text))
        else:
            await self.send(text_data=text)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """As channels does, without its hop to the ORM thread before every frame: each
        database step closes stale connections itself (`persistence.db_step`)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- Frames in --------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Decode a frame; anything that is not a JSON object is answered, never fatal."""
        try:
            content = json.loads(text_data) if text_data is not None else None
        except ValueError:
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
            "edit": self.on_edit,
        }.get(content["type"])
        if handler is None:
            await self.send_error("bad_request", f"Unknown frame type {content['type']!r}.")
            return
        try:
            await handler(content)
        except persistence.Refused as refused:
            await self.send_error(refused.code, refused.detail)
        except Exception:
            # A failure of ours (the database gone, a bug): said, logged, the socket kept.
            logger.exception("serving a %r frame failed", content["type"])
            await self.send_error("internal_error", "Something went wrong; try again.")

    async def on_send(self, frame: dict[str, Any]) -> None:
        """Post a user message and start a reply; a retried `client_msg_id` posts nothing."""
        content = _text(frame, "content")
        client_msg_id = _uuid(frame, "client_msg_id", required=False)
        if client_msg_id is not None and replies.running(self.conversation_id):
            # Most likely the retry of the send whose reply runs: answer it, not `busy`.
            sent = await persistence.find_sent(self.user_id, self.conversation_id, client_msg_id)
            if sent is not None:
                await self.send_json({"type": "message", "message": message_json(sent)})
                return
        with replies.reserved(self.conversation_id) as reply:
            posted = await persistence.post_user_message(
                self.user_id, self.conversation_id, content, client_msg_id
            )
            if isinstance(posted, persistence.ReplyPlan):
                await self.start_reply(reply, posted)
                return
        # A retry of a message already posted: show it again, start nothing.
        await self.send_json({"type": "message", "message": message_json(posted)})

    async def on_stop(self, frame: dict[str, Any]) -> None:
        """Stop the running reply, if any; its `done` frame follows."""
        if not await persistence.owns(self.user_id, self.conversation_id):
            raise persistence.NOT_FOUND
        reply = replies.running(self.conversation_id)
        if reply is not None:
            reply.stop()
        elif crossprocess.enabled():
            await crossprocess.request_stop(self.conversation_id)  # another process's reply

    async def on_regenerate(self, frame: dict[str, Any]) -> None:
        """Replace the last reply with a new one."""
        with replies.reserved(self.conversation_id) as reply:
            plan = await persistence.regenerate(self.user_id, self.conversation_id)
            await self.start_reply(reply, plan)

    async def on_edit(self, frame: dict[str, Any]) -> None:
        """Change a user message and answer it anew, dropping what came after it."""
        message_id = _uuid(frame, "message_id", required=True)
        assert message_id is not None
        content = _text(frame, "content")
        with replies.reserved(self.conversation_id) as reply:
            plan = await persistence.edit(self.user_id, self.conversation_id, message_id, content)
            await self.start_reply(reply, plan)

    async def start_reply(self, reply: replies.Reply, plan: persistence.ReplyPlan) -> None:
        for removed in plan.removed:
            await watchers.broadcast(
                self.conversation_id, {"type": "removed", "message_id": str(removed)}
            )
        for message in (plan.user_message, plan.assistant_message):
            if message is not None:
                await watchers.broadcast(
                    self.conversation_id, {"type": "message", "message": message_json(message)}
                )
        reply.start(plan.assistant_message.id, plan.conversation.model, plan.prompt)

    async def send_error(self, code: str, detail: str) -> None:
        await self.send_json({"type": "error", "code": code, "detail": detail})


def session_cookie(scope: dict[str, Any]) -> str | None:
    """The socket's session key, read from its cookie header as Django would: what channels'
    `AuthMiddlewareStack` does, without keeping the cookies, the session and the user in
    the scope of every open socket."""
    for name, value in scope["headers"]:
        if name == b"cookie":
            return parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME)
    return None


def _text(frame: dict[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str) or not value.strip():
        raise persistence.Refused("bad_request", f"'{key}' must be a non-empty string.")
    limit = settings.CHAT_MAX_INPUT_CHARS
    if len(value) > limit:
        raise persistence.Refused("too_long", f"A message may hold at most {limit} characters.")
    return value


def _uuid(frame: dict[str, Any], key: str, *, required: bool) -> UUID | None:
    value = frame.get(key)
    if value is None and not required:
        return None
    if isinstance(value, str):
        with suppress(ValueError):
            return UUID(value)
    raise persistence.Refused("bad_request", f"'{key}' must be a UUID.")


def _already_in(frame: dict[str, Any], streaming: dict[str, Any]) -> bool:
    """A delta the `state` snapshot already holds."""
    return (
        frame.get("type") == "delta"
        and frame["message_id"] == streaming["message_id"]
        and frame["seq"] <= streaming["seq"]
    )
