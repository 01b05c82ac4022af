"""The chat service: the only way to act on a conversation, whatever the front end.

Open a conversation and watch its frames, send, stop, regenerate, edit, create, list,
read, change and delete. A step that starts a reply owns the sequence reserve -> persist
-> broadcast -> start. Refusals are `chat.refusals.Refused`, which each front end (the
websocket consumer, the JSON and SSE views, the pages) translates into its own shape.

The service also holds the process's live state (running replies, the clock, watchers,
the model client, the batched database steps, the open sockets of each session): one
`ChatService` per event loop, from `service()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings

from chat import conversation_store, crossprocess, llm, persistence, refusals, session_checks
from chat.batching import Batcher
from chat.conversation_store import Position
from chat.crossprocess import CrossProcess
from chat.fanout import FanOut
from chat.frame_limits import encoded_state
from chat.heartbeats import Heartbeat
from chat.models import Conversation, Message
from chat.persistence import ReplyPlan, State
from chat.refusals import Refused
from chat.replies import Replies, Reply
from chat.serializers import conversation_json, done_frame, message_json
from chat.socket_counts import SocketCounts
from chat.text import storable
from chat.titles import Titles
from chat.watchers import Frame, Held, Watcher, Watchers

logger = logging.getLogger(__name__)

MAX_TITLE_LENGTH = 200  # Conversation.title's max_length


class SessionWatcher(Watcher, Protocol):
    async def end_session(self) -> None:
        """Its session has ended (a logout): stop, as one that is not logged in."""


class Attachment(Held):
    """One watcher's place among a conversation's watchers, until `detach`."""

    __slots__ = ("conversation_id", "service", "session_key", "user_id")

    def __init__(
        self,
        service: ChatService,
        conversation_id: UUID,
        watcher: Watcher,
        session_key: str | None = None,
        *,
        hold: bool = True,
    ) -> None:
        super().__init__(watcher, hold=hold)
        self.service, self.conversation_id, self.session_key = (
            service,
            conversation_id,
            session_key,
        )
        self.user_id: int | None = None  # set for a socket, counted among its user's
        service.watchers.watch(conversation_id, self)

    def detach(self) -> None:
        """Stop watching; a running reply goes on and is saved (a disconnect is not a stop)."""
        self.service.watchers.unwatch(self.conversation_id, self)
        if self.session_key is not None:
            self.service.forget_session_watcher(self)
        if self.user_id is not None:
            self.service.socket_counts.release(self.user_id)
            self.user_id = None


@dataclass
class Started:
    """What a send, regenerate or edit did: the messages it stored and the reply it
    started; a retried send stored nothing new and starts nothing (`reply` None)."""

    user_message: Message | None
    assistant_message: Message | None
    reply: Reply | None


class ChatService:
    """The chats of one event loop."""

    def __init__(self) -> None:
        self.watchers = Watchers()
        self.upstream = llm.Upstream()
        self.crossprocess = (
            CrossProcess(self._stop_here, self.end_session, self._how_far)
            if crossprocess.enabled()
            else None
        )
        # Frames to and from the other processes' watchers (chat.fanout).
        self.fanout = (
            FanOut(settings.REDIS_URL, self.watchers.deliver_local, self._ask_runner, self._resync)
            if self.crossprocess is not None
            else None
        )
        self.watchers.fanout = self.fanout
        # Processes that die without a word are noticed, and their replies ended.
        self.heartbeat = (
            Heartbeat(
                settings.REDIS_URL,
                self._running_message_ids,
                self._end_dead_replies,
                self._take_over,
            )
            if self.crossprocess is not None
            else None
        )
        self.replies = Replies(self.watchers, self.upstream, self.crossprocess)
        self.titles = Titles(self.upstream, self.watchers)
        self._sessions: dict[str, set[Attachment]] = {}
        self.socket_counts = SocketCounts()
        self._session_checks: asyncio.Task[None] | None = None
        self._joining_processes: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        # Steps that many users' requests arrive at together share one trip to the ORM
        # thread (`chat.batching`); each request still gets its own result.
        self._openings: Batcher[persistence.Opening, persistence.Opened] = Batcher(
            persistence.open_conversations, key=lambda opening: opening.conversation_id
        )
        self._sends: Batcher[persistence.Send, ReplyPlan | Message] = Batcher(
            persistence.post_user_messages, key=lambda send: send.conversation_id
        )
        # As the async ORM does: no connection closing around, for one INSERT.
        self._creations: Batcher[Conversation, Conversation] = Batcher(
            sync_to_async(conversation_store.create_conversations)
        )

    # --- Watching -------------------------------------------------------------------------

    async def open(
        self, session_key: str, conversation_id: UUID, watcher: SessionWatcher
    ) -> tuple[int | None, Attachment | None]:
        """For a socket that opens with a session: the user it logs in (None: refuse it)
        and, if the conversation is theirs, the watcher's attachment, after sending it the
        `state` frame; every frame after the state follows."""
        attachment = Attachment(self, conversation_id, watcher, session_key)
        if self.heartbeat is not None:
            self.heartbeat.start()
        try:
            user_id, state = await self._openings.submit(
                persistence.Opening(session_key, conversation_id)
            )
        except BaseException:
            attachment.detach()
            raise
        if user_id is None or state is None:
            attachment.detach()
            return user_id, None
        if not await self.socket_counts.take(user_id):
            attachment.detach()
            raise Refused("rate_limited", "You have too many tabs open; close some.")
        attachment.user_id = user_id
        self._hold_session(attachment)
        if self.crossprocess is not None:
            await self._hear_of_logouts_elsewhere()
        await self._send_state(attachment, state)
        return user_id, attachment

    def watch(
        self, conversation_id: UUID, watcher: Watcher, *, session_key: str | None = None
    ) -> Attachment:
        """Watch every frame of the conversation from now on, without a `state` (a caller
        that is about to act on it, and has checked or will check that it may). With the
        session that asks, the watcher's `end_session` is called when it ends."""
        attachment = Attachment(self, conversation_id, watcher, session_key, hold=False)
        self._hold_session(attachment)
        return attachment

    def _hold_session(self, attachment: Attachment) -> None:
        if attachment.session_key is not None:
            self._sessions.setdefault(attachment.session_key, set()).add(attachment)
            self._check_sessions_from_now_on()
            self._hear_of_session_ends_from_now_on()

    def _hear_of_session_ends_from_now_on(self) -> None:
        """What a session or a token opened here ends with a logout or a revocation on
        another process: SSE streams too, where no socket has made this process join the
        processes' group. A socket's opening waits for the join before its `state`; a
        stream goes on at once, the join a Redis round trip behind."""
        if (
            self.crossprocess is not None
            and not self.crossprocess.hears_word()
            and (self._joining_processes is None or self._joining_processes.done())
        ):
            self._joining_processes = asyncio.create_task(
                self._hear_of_logouts_elsewhere(), name="join-processes"
            )

    async def follow(
        self,
        user_id: int,
        conversation_id: UUID,
        watcher: Watcher,
        *,
        after: int | None,
        session_key: str | None = None,
    ) -> Attachment | None:
        """Reattach to the running reply: the delta frames after `after` (a `state` when
        None), then every frame as it comes; the attachment, to detach once the reply is
        `done`. With no reply running, one `state` frame and None."""
        reply = self.replies.running(conversation_id)
        if reply is not None and reply.done is not None:
            reply = None  # it has sent its `done`: only its last step keeps it registered
        if reply is None and after is not None and self.fanout is not None:
            following = await self._follow_elsewhere(
                user_id, conversation_id, watcher, after, session_key
            )
            if following is not None:
                return following
        if reply is not None and reply.message_id is not None and after is not None:
            if not await conversation_store.owns(user_id, conversation_id):
                raise refusals.not_found()
            following = Attachment(self, conversation_id, watcher, session_key)
            self._hold_session(following)
            for frame in reply.deltas_after(after):
                await watcher.deliver(*_encoded(frame))
            await following.release({"message_id": str(reply.message_id), "seq": reply.seq})
            return following
        # A `state`; with a reply running, watched from before it is read, frames held.
        attachment = Attachment(self, conversation_id, watcher, session_key) if reply else None
        try:
            state = await conversation_store.transcript(  # scoped to the owner
                user_id, conversation_id, latest=settings.CHAT_STATE_MESSAGES
            )
        except BaseException:
            if attachment is not None:
                attachment.detach()
            raise
        if attachment is None:
            await watcher.deliver(*encoded_state(self._state_frame(state)))
            return None
        self._hold_session(attachment)
        await self._send_state(attachment, state)
        return attachment

    async def _follow_elsewhere(
        self,
        user_id: int,
        conversation_id: UUID,
        watcher: Watcher,
        after: int,
        session_key: str | None,
    ) -> Attachment | None:
        """`follow` a reply that another process runs: its deltas after `after` from its
        runner, then the frames heard after them. None when no process runs one."""
        assert self.fanout is not None
        if not await conversation_store.owns(user_id, conversation_id):
            raise refusals.not_found()
        following = Attachment(self, conversation_id, watcher, session_key)
        try:
            answer = await self.fanout.reply_so_far(conversation_id, after)
        except BaseException:
            following.detach()
            raise
        if answer is None:
            following.detach()
            return None
        self._hold_session(following)
        for frame in answer["deltas"]:
            await watcher.deliver(*_encoded(frame))
        await following.release({"message_id": answer["message_id"], "seq": answer["seq"]})
        return following

    async def _send_state(self, attachment: Attachment, state: State) -> None:
        # Only this conversation's own reply can be streaming in it.
        reply = self.replies.running(state.conversation.pk)
        running = {reply.message_id} if reply is not None and reply.message_id else set()
        if any(
            m.status == Message.Status.STREAMING and m.pk not in running for m in state.messages
        ):
            # A reply that no process runs any more (its process died): settle it first.
            state.messages = await persistence.settle_orphans(state.conversation.pk, running)
        frame = self._state_frame(state)
        if frame["streaming"] is None:
            frame["streaming"] = await self._streaming_elsewhere(state)
        await attachment.watcher.deliver(*encoded_state(frame))
        await attachment.release(frame["streaming"])

    async def _streaming_elsewhere(self, state: State) -> Frame | None:
        """The text so far of a reply that another process runs in the conversation, asked
        of that process (chat.fanout); None with one process, or none streaming."""
        if self.fanout is None or not any(
            m.status == Message.Status.STREAMING for m in state.messages
        ):
            return None
        answer = await self.fanout.reply_so_far(state.conversation.pk)
        if answer is None:
            return None
        return streaming_snapshot(answer)

    # --- Across processes (chat.fanout, chat.crossprocess) ---------------------------------

    def _how_far(self, conversation_id: UUID, after: int | None) -> dict[str, Any] | None:
        """What another process asks of a reply this one runs: its text so far and the
        deltas after `after`; None if none runs here."""
        reply = self.replies.running(conversation_id)
        snapshot = reply.snapshot() if reply is not None and reply.done is None else None
        if reply is None or snapshot is None:
            return None
        if self.fanout is not None:
            self.fanout.heard_elsewhere(conversation_id)  # publish every delta again
        return {**snapshot, "deltas": reply.deltas_after(after) if after is not None else []}

    async def _take_over(self, conversation_id: str) -> None:
        """Continue a reply that a process handed over as it stopped (chat.heartbeats)."""
        owner_id = await conversation_store.owner_of(UUID(conversation_id))
        if owner_id is None:
            return  # deleted meanwhile
        try:
            await self.continue_reply(owner_id, UUID(conversation_id))
        except Refused as refused:  # continued already, or a new reply runs
            logger.info("not continuing %s: %s", conversation_id, refused.detail)

    def _running_message_ids(self) -> list[str]:
        return [
            str(reply.message_id)
            for reply in self.replies.all_running()
            if reply.message_id is not None and reply.done is None
        ]

    async def _end_dead_replies(self, message_ids: list[str]) -> None:
        """The replies of a process that died (chat.heartbeats): `interrupted`, as they
        were last saved, and every tab of their conversations told."""
        for message in await persistence.interrupt_streaming(message_ids):
            done = done_frame(
                message.pk, message.status, message.content, message.usage, message.error
            )
            await self.watchers.broadcast(message.conversation_id, done)

    async def _ask_runner(self, conversation_id: UUID, after: int | None) -> dict[str, Any] | None:
        assert self.crossprocess is not None
        return await self.crossprocess.ask_runner(conversation_id, after)

    async def _resync(self, conversation_id: UUID) -> tuple[str, int] | None:
        """A fresh `state` for this process's watchers of the conversation, after frames
        were lost on their way here; the running reply's (message id, seq) it holds."""
        state = await conversation_store.current_state(
            conversation_id, latest=settings.CHAT_STATE_MESSAGES
        )
        if state is None:
            return None  # deleted: its `deleted` frame tells the watchers
        frame = self._state_frame(state)
        if frame["streaming"] is None and self.fanout is not None:
            answer = await self._ask_runner(conversation_id, None)
            if answer is not None:
                frame["streaming"] = streaming_snapshot(answer)
        await self.watchers.deliver_local(conversation_id, *encoded_state(frame))
        streaming = frame["streaming"]
        return (streaming["message_id"], streaming["seq"]) if streaming else None

    def _state_frame(self, state: State) -> Frame:
        reply = self.replies.running(state.conversation.pk)
        return {
            "type": "state",
            "conversation": conversation_json(state.conversation),
            "messages": [message_json(m) for m in state.messages],
            "streaming": reply.snapshot() if reply is not None and reply.done is None else None,
        }

    # --- Replies --------------------------------------------------------------------------

    async def send(
        self, user_id: int, conversation_id: UUID, content: str, client_msg_id: UUID | None = None
    ) -> Started:
        """Post a user message and start a reply; a retried `client_msg_id` posts nothing."""
        content = checked_content(content)
        if client_msg_id is not None and self.replies.running(conversation_id):
            # Most likely the retry of the send whose reply runs: answer it, not `busy`.
            sent = await persistence.find_sent(user_id, conversation_id, client_msg_id)
            if sent is not None:
                return Started(sent, None, None)
        with self.replies.reserved(conversation_id) as reply:
            posted = await self._sends.submit(
                persistence.Send(user_id, conversation_id, content, client_msg_id)
            )
            if isinstance(posted, ReplyPlan):
                return await self._start(reply, posted)
        return Started(posted, None, None)  # a retry of a message already posted

    async def regenerate(self, user_id: int, conversation_id: UUID) -> Started:
        """Replace the last reply with a new one."""
        with self.replies.reserved(conversation_id) as reply:
            plan = await persistence.regenerate(user_id, conversation_id)
            return await self._start(reply, plan)

    async def continue_reply(self, user_id: int, conversation_id: UUID) -> Started:
        """Go on with the last reply where it was cut (`interrupted`), in the same message."""
        with self.replies.reserved(conversation_id) as reply:
            plan = await persistence.continue_reply(user_id, conversation_id)
            return await self._start(reply, plan)

    async def edit(
        self, user_id: int, conversation_id: UUID, message_id: UUID, content: str
    ) -> Started:
        """Change a user message and answer it anew, dropping what came after it."""
        content = checked_content(content)
        with self.replies.reserved(conversation_id) as reply:
            plan = await persistence.edit(user_id, conversation_id, message_id, content)
            return await self._start(reply, plan)

    async def _start(self, reply: Reply, plan: ReplyPlan) -> Started:
        conversation_id = plan.conversation.pk
        for removed in plan.removed:
            await self.watchers.broadcast(
                conversation_id, {"type": "removed", "message_id": str(removed)}
            )
        for message in (plan.user_message, plan.assistant_message):
            if message is not None:
                await self.watchers.broadcast(
                    conversation_id, {"type": "message", "message": message_json(message)}
                )
        prompt = llm.build_prompt(
            plan.conversation.system_prompt, plan.history, settings.CHAT_CONTEXT_TOKENS
        )
        conversation = plan.conversation
        if self.heartbeat is not None:
            self.heartbeat.beat_soon()
        continues = None
        if plan.continued:
            before = plan.assistant_message
            used = llm.Usage(
                before.prompt_tokens or 0, before.completion_tokens or 0, before.usage_estimated
            )
            continues = (before.content, used)
        reply.start(
            plan.assistant_message.id,
            conversation.model,
            prompt,
            max_tokens=plan.max_tokens,
            user_id=conversation.owner_id,
            continues=continues,
        )
        self.titles.after(reply, plan)
        return Started(plan.user_message, plan.assistant_message, reply)

    async def finished(self, started: Started) -> Message | None:
        """The started reply's message once it has ended, as it was saved: what a caller
        that waits for the whole reply answers. Waiting may be cancelled; the reply is not."""
        reply, message = started.reply, started.assistant_message
        if reply is None or reply.task is None or message is None:
            return message
        await asyncio.wait([reply.task])
        done = reply.done
        if done is None:  # its final step crashed: what the database holds
            return await persistence.message(message.pk)
        message.content, message.status = done["content"], done["status"]
        usage, error = done["usage"], done["error"] or {"code": "", "detail": ""}
        message.prompt_tokens = usage["prompt_tokens"]
        message.completion_tokens = usage["completion_tokens"]
        message.total_tokens = usage["total_tokens"]
        message.usage_estimated = usage["estimated"]
        message.error_code, message.error_detail = error["code"], error["detail"]
        return message

    async def stop(self, user_id: int, conversation_id: UUID) -> None:
        """Stop the running reply, if any; its `done` frame follows."""
        if not await conversation_store.owns(user_id, conversation_id):
            raise refusals.not_found()
        if not self._stop_here(conversation_id) and self.crossprocess is not None:
            await self.crossprocess.request_stop(conversation_id)  # another process's reply

    def _stop_here(self, conversation_id: UUID) -> bool:
        reply = self.replies.running(conversation_id)
        if reply is not None:
            reply.stop()
        return reply is not None

    # --- Conversations ---------------------------------------------------------------------

    async def create(
        self, user_id: int, *, title: str = "", model: str = "", system_prompt: str = ""
    ) -> Conversation:
        """A new conversation, with the default model unless one of CHAT_MODELS is named."""
        fields = checked_fields(title=title, model=model or default_model())
        fields |= checked_fields(system_prompt=system_prompt)
        return await self._creations.submit(Conversation(owner_id=user_id, **fields))

    async def conversations(
        self, user_id: int, *, after: Position | None = None, text: str = "", limit: int = 20
    ) -> list[Conversation]:
        """The user's conversations, newest first; `text` searches titles and messages."""
        return await conversation_store.list_conversations(
            user_id, after=after, text=text.strip(), limit=limit
        )

    async def transcript(
        self, user_id: int, conversation_id: UUID, *, latest: int | None = None
    ) -> State:
        """The conversation with its messages, oldest first: all, or the `latest` ones."""
        return await conversation_store.transcript(user_id, conversation_id, latest=latest)

    async def update(self, user_id: int, conversation_id: UUID, **fields: str) -> Conversation:
        """Change the title, model or system prompt; every open tab is told."""
        conversation = await conversation_store.update_conversation(
            user_id, conversation_id, checked_fields(**fields)
        )
        await self.watchers.broadcast(
            conversation_id,
            {"type": "conversation", "conversation": conversation_json(conversation)},
        )
        return conversation

    async def delete(self, user_id: int, conversation_id: UUID) -> None:
        """Delete the conversation, stopping its reply first; every open tab is told."""
        if not await conversation_store.owns(user_id, conversation_id):
            raise refusals.not_found()
        reply = self.replies.running(conversation_id)
        if reply is not None and reply.task is not None:
            reply.stop()
            await asyncio.wait([reply.task])
        elif self.crossprocess is not None:
            await self.crossprocess.request_stop(conversation_id)
        await conversation_store.delete_conversation(user_id, conversation_id)
        await self.watchers.broadcast(
            conversation_id, {"type": "deleted", "conversation_id": str(conversation_id)}
        )

    # --- Sessions ---------------------------------------------------------------------------

    def end_session(self, session_key: str) -> None:
        """A session has ended: its sockets here close (on this loop)."""
        for attachment in self._sessions.pop(session_key, ()):
            watcher = attachment.watcher
            if hasattr(watcher, "end_session"):
                task = asyncio.ensure_future(watcher.end_session())
                self._closing.add(task)  # kept until done: the loop holds tasks only weakly
                task.add_done_callback(self._closing.discard)

    def forget_session_watcher(self, attachment: Attachment) -> None:
        assert attachment.session_key is not None
        attachments = self._sessions.get(attachment.session_key)
        if attachments is not None:
            attachments.discard(attachment)
            if not attachments:
                del self._sessions[attachment.session_key]

    def _check_sessions_from_now_on(self) -> None:
        if self._session_checks is None or self._session_checks.done():
            self._session_checks = asyncio.create_task(
                self._check_sessions(), name="session-checks"
            )

    async def _check_sessions(self) -> None:
        """Close the sockets whose session ended without a logout (it expired or was
        deleted, the password changed, the user was deactivated), every
        CHAT_SESSION_CHECK_SECONDS, for as long as sockets with a session are open."""
        while self._sessions:
            await asyncio.sleep(settings.CHAT_SESSION_CHECK_SECONDS)
            keys = list(self._sessions)
            try:
                alive = await session_checks.logged_in(keys)
            except Exception:
                logger.warning("checking the open sockets' sessions failed", exc_info=True)
                continue
            for key in keys:
                if key not in alive:
                    self.end_session(key)

    async def _hear_of_logouts_elsewhere(self) -> None:
        assert self.crossprocess is not None
        try:
            await self.crossprocess.take_word()
        except Exception:
            # The socket works; only a logout on another process cannot close it.
            logger.warning("the channel layer is unreachable", exc_info=True)

    # --- The end --------------------------------------------------------------------------

    async def stop_all(self) -> None:
        """Stop every reply and wait until each is saved; close what the service opened."""
        await self.replies.stop_all()
        await self._close()

    async def interrupt_all(self) -> None:
        """End every reply as `interrupted`, its text saved (server shutdown)."""
        if self.heartbeat is not None:
            # First, so that no reply handed over by another process starts here after
            # the replies to end are counted.
            await self.heartbeat.stop_taking_over()
        running = self.replies.all_running()
        if running:
            logger.info("server stopping: saving %d running replies", len(running))
        started = [str(r.conversation_id) for r in running if r.message_id is not None]
        await self.replies.interrupt_all()
        if self.heartbeat is not None and started:
            try:
                await self.heartbeat.hand_over(started)
            except Exception:
                logger.warning("handing replies over failed: they stay interrupted", exc_info=True)
        await self._close()

    async def _close(self) -> None:
        await self.titles.close()
        checks, self._session_checks = self._session_checks, None
        joining, self._joining_processes = self._joining_processes, None
        for task in (checks, joining):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.heartbeat is not None:
            await self.heartbeat.close()
        if self.fanout is not None:
            await self.fanout.close()
        if self.crossprocess is not None:
            await self.crossprocess.close()
        await self.socket_counts.close()
        await self.upstream.aclose()


# --- Checks shared by every front end -----------------------------------------------------


def checked_content(content: str) -> str:
    content = storable(content)
    if not content.strip():
        raise refusals.bad_request("'content' must be a non-empty string.")
    if len(content) > settings.CHAT_MAX_INPUT_CHARS:
        raise refusals.too_long("A message", settings.CHAT_MAX_INPUT_CHARS)
    return content


def checked_fields(**fields: str) -> dict[str, str]:
    """Title, model and system prompt as they may be stored, or a refusal."""
    checked = {name: storable(value) for name, value in fields.items()}
    if "title" in checked:
        checked["title"] = checked["title"].strip()
        if len(checked["title"]) > MAX_TITLE_LENGTH:
            raise refusals.too_long("A title", MAX_TITLE_LENGTH)
    if "model" in checked and checked["model"] not in settings.CHAT_MODELS:
        offered = ", ".join(settings.CHAT_MODELS)
        raise refusals.bad_request(f"Unknown model; offered: {offered}.")
    if (
        "system_prompt" in checked
        and len(checked["system_prompt"]) > settings.CHAT_MAX_INPUT_CHARS
    ):
        raise refusals.too_long("A system prompt", settings.CHAT_MAX_INPUT_CHARS)
    unknown = set(checked) - {"title", "model", "system_prompt"}
    if unknown:
        raise refusals.bad_request(f"Unknown fields: {', '.join(sorted(unknown))}.")
    return checked


def default_model() -> str:
    model: str = settings.CHAT_MODELS[0]
    return model


def _encoded(frame: Frame) -> tuple[Frame, str]:
    return frame, json.dumps(frame)


# --- One service per event loop -----------------------------------------------------------

_services: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ChatService] = (
    weakref.WeakKeyDictionary()
)


def service() -> ChatService:
    """The chat service of the running event loop (one in production; tests run several
    loops in turn)."""
    loop = asyncio.get_running_loop()
    found = _services.get(loop)
    if found is None:
        found = _services[loop] = ChatService()
    return found


def services() -> list[tuple[asyncio.AbstractEventLoop, ChatService]]:
    """Every loop's service, for code that runs outside them (a logout's signal)."""
    return list(_services.items())


def streaming_snapshot(answer: dict[str, Any]) -> Frame:
    """A `state`'s `streaming`, from a runner's answer (chat.fanout.reply_so_far)."""
    return {key: answer[key] for key in ("message_id", "seq", "content")}
