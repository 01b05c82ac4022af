"""Every frame of a conversation to its watchers on every process (with REDIS_URL).

A process that broadcasts a frame (it runs the reply, or it changed the conversation)
publishes it once to the conversation's Redis pub/sub channel; a process with watchers of
a conversation subscribes to that channel while it has them, and passes each frame it
hears on to its own watchers. So a frame costs one Redis message per process that watches
the conversation, never one per token or per socket, and a process without watchers there
hears nothing of it.

Redis pub/sub and not the channel layer: a frame must leave without a round trip per
frame on the clock's path (publishes are queued and sent in one pipeline per turn of the
loop, in order), and a process must hear only the conversations it watches.

Pub/sub delivers at most once: a subscriber whose connection drops (Redis restarts, or
cuts a slow subscriber off) misses what was published meanwhile. So a receiver counts the
deltas of each reply (`seq`): a delta that skips some asks the process that runs the reply
for the missing ones (over `chat.crossprocess`), holding what comes meanwhile. When that
cannot mend it (the reply ended meanwhile, a reply it never heard of began), and after
every reconnection, the conversation's watchers here get a fresh `state` (the page renders
it whole), and the frames after it follow. A tab that opens mid-reply on a process that
does not run it gets the text so far from the runner too, asked after subscribing, so
that no delta falls between the two.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any
from uuid import UUID

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from chat import redis_clients, redis_names
from chat.watchers import Frame

logger = logging.getLogger(__name__)

# How long to wait for a subscription to be confirmed, or for the runner's answer.
WAIT_SECONDS = 2.0
# Between two tries to reach Redis again after the subscriber's connection dropped.
RECONNECT_SECONDS = 0.5
# A conversation that no other process hears (PUBLISH reached nobody else) gets one delta
# published per this many seconds, not all: to find out when another process starts to
# listen. The deltas between are mended from the runner by the one that starts to listen,
# as any gap; frames other than deltas always go.
PROBE_SECONDS = 1.0

# (conversation, `after`) -> the runner's answer: {"message_id", "seq", "content",
# "deltas": [frames after `after`]}, or None when no process answers.
Ask = Callable[[UUID, int | None], Awaitable[dict[str, Any] | None]]
DeliverLocal = Callable[[UUID, Frame, str], Awaitable[None]]
# Send the conversation's watchers here a fresh `state`; its running reply's (message id,
# seq), if one runs.
Resync = Callable[[UUID], Awaitable[tuple[str, int] | None]]


def channel_of(conversation_id: UUID) -> str:
    return redis_names.name("frames", conversation_id.hex)


class Following:
    """What this process has passed on of one conversation's running reply."""

    __slots__ = ("message_id", "seq")

    def __init__(self, message_id: str, seq: int) -> None:
        self.message_id, self.seq = message_id, seq


class FanOut:
    """This process's side of the fan-out: what it publishes and what it hears."""

    def __init__(self, url: str, deliver_local: DeliverLocal, ask: Ask, resync: Resync) -> None:
        self.origin = uuid.uuid4().hex[:16]
        self._prefix = (self.origin + " ").encode()
        self._redis: Redis = redis_clients.client(url)
        self._deliver_local, self._ask, self._resync = deliver_local, ask, resync
        self._outbox: list[tuple[UUID, bytes]] = []
        # Conversations no other process listens to: when a delta last went anyway.
        self._unheard: dict[UUID, float] = {}
        self.published = 0  # frames sent to Redis (for tests and the benchmark)
        self._sending: asyncio.Task[None] | None = None
        self._wanted: set[UUID] = set()
        self._confirmed: dict[UUID, asyncio.Event] = {}
        self._changes: asyncio.Queue[tuple[bool, UUID]] = asyncio.Queue()
        self._pubsub: PubSub | None = None
        self._listening: asyncio.Task[None] | None = None
        self._following: dict[UUID, Following] = {}
        # Conversations being mended: the frames heard meanwhile, passed on after.
        self._holding: dict[UUID, list[tuple[Frame, str]]] = {}
        self._repairs: set[asyncio.Task[None]] = set()

    # --- Publishing -----------------------------------------------------------------------

    def publish(self, conversation_id: UUID, text: str, *, delta: bool = False) -> None:
        """Send a frame (its JSON) to the other processes that watch the conversation."""
        if not delta:
            # Always sent, and whether anyone else listens is asked again: the entries
            # last no longer than a reply.
            self._unheard.pop(conversation_id, None)
        elif conversation_id in self._unheard:
            now = asyncio.get_running_loop().time()
            if now - self._unheard[conversation_id] < PROBE_SECONDS:
                return
            self._unheard[conversation_id] = now
        self._outbox.append((conversation_id, self._prefix + text.encode()))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="fanout-publish")

    async def _send(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for conversation_id, payload in batch:
                        pipe.publish(channel_of(conversation_id), payload)
                    heard_by = await pipe.execute()
            except (RedisError, OSError):
                # Lost for the other processes: their receivers see the gap and ask.
                logger.warning("publishing %d frames failed", len(batch), exc_info=True)
                continue
            self.published += len(batch)
            now = asyncio.get_running_loop().time()
            for (conversation_id, _), receivers in zip(batch, heard_by, strict=True):
                others = int(receivers) - (1 if conversation_id in self._wanted else 0)
                if others > 0:
                    self._unheard.pop(conversation_id, None)
                else:
                    self._unheard.setdefault(conversation_id, now)

    def heard_elsewhere(self, conversation_id: UUID) -> None:
        """Another process asked about the conversation's reply: it listens from now on."""
        self._unheard.pop(conversation_id, None)

    # --- Subscribing ----------------------------------------------------------------------

    def watch(self, conversation_id: UUID) -> None:
        """This process has a watcher of the conversation now (its first)."""
        if conversation_id not in self._wanted:
            self._wanted.add(conversation_id)
            self._confirmed[conversation_id] = asyncio.Event()
            self._changes.put_nowait((True, conversation_id))
            self._listen_from_now_on()

    def unwatch(self, conversation_id: UUID) -> None:
        """Its last watcher here has gone."""
        if conversation_id in self._wanted:
            self._wanted.discard(conversation_id)
            self._confirmed.pop(conversation_id, None)
            self._following.pop(conversation_id, None)
            self._changes.put_nowait((False, conversation_id))

    async def subscribed(self, conversation_id: UUID) -> bool:
        """Wait until this process hears the conversation's frames; False if it cannot."""
        confirmed = self._confirmed.get(conversation_id)
        if confirmed is None:
            return False
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                await confirmed.wait()
        except TimeoutError:
            return False
        return True

    def _listen_from_now_on(self) -> None:
        if self._listening is None or self._listening.done():
            self._listening = asyncio.create_task(self._listen(), name="fanout-listener")

    async def _listen(self) -> None:
        """Subscribe and unsubscribe as asked, and pass on what is heard; come back after
        Redis drops the connection, and repair what was missed meanwhile."""
        reconnected = False
        while True:
            try:
                await self._listen_once(reconnected)
            except (RedisError, OSError):
                logger.warning("the fan-out's Redis connection dropped", exc_info=True)
            for event in self._confirmed.values():
                event.clear()
            if self._pubsub is not None:
                with suppress(RedisError, OSError):
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
                self._pubsub = None
            reconnected = True
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen_once(self, reconnected: bool) -> None:
        pubsub = self._pubsub = self._redis.pubsub()
        subscribed: set[UUID] = set()
        # Drop the requests that are already in `_wanted`: subscribe to all of it anew.
        while not self._changes.empty():
            self._changes.get_nowait()
        if self._wanted:
            subscribed = set(self._wanted)
            await pubsub.subscribe(*(channel_of(c) for c in subscribed))
        if reconnected:
            for conversation_id in subscribed:
                self._mend_soon(conversation_id, resync=True)
        # One task reads what Redis sends, waiting for it (a read with a timeout costs twice
        # as much per message); the other subscribes and unsubscribes as watchers come and
        # go, on the same connection. Either one's end (a dropped connection) ends both.
        subscription = asyncio.Event()
        tasks = [
            asyncio.create_task(self._read(pubsub, subscription), name="fanout-read"),
            asyncio.create_task(
                self._follow_changes(pubsub, subscribed, subscription), name="fanout-subscribe"
            ),
        ]
        try:
            ended, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in ended:
            task.result()  # its error

    async def _read(self, pubsub: PubSub, subscription: asyncio.Event) -> None:
        while True:
            async for message in pubsub.listen():
                await self._heard(message)
            # listen() ends once nothing is subscribed: wait for the next subscription.
            subscription.clear()
            if not pubsub.subscribed:
                await subscription.wait()

    async def _follow_changes(
        self, pubsub: PubSub, subscribed: set[UUID], subscription: asyncio.Event
    ) -> None:
        while True:
            wanted, conversation_id = await self._changes.get()
            if wanted and conversation_id not in subscribed:
                subscribed.add(conversation_id)
                await pubsub.subscribe(channel_of(conversation_id))
                subscription.set()
            elif not wanted and conversation_id in subscribed:
                subscribed.discard(conversation_id)
                await pubsub.unsubscribe(channel_of(conversation_id))

    async def _heard(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"].decode()
        conversation_id = UUID(hex=channel.rsplit(":", 1)[1])
        if kind == "subscribe":
            confirmed = self._confirmed.get(conversation_id)
            if confirmed is not None:
                confirmed.set()
            return
        if kind != "message" or conversation_id not in self._wanted:
            return
        data: bytes = message["data"]
        if data.startswith(self._prefix):
            return  # our own frame, passed on here already
        text = data.split(b" ", 1)[1].decode()
        frame: Frame = json.loads(text)
        await self._pass_on(conversation_id, frame, text)

    # --- Passing frames on, exactly once and in order -------------------------------------

    async def _pass_on(self, conversation_id: UUID, frame: Frame, text: str) -> None:
        held = self._holding.get(conversation_id)
        if held is not None:
            held.append((frame, text))
            return
        following = self._following.get(conversation_id)
        kind = frame.get("type")
        if kind == "delta":
            message_id, seq = frame["message_id"], frame["seq"]
            if following is None or following.message_id != message_id:
                if seq != 1:  # a reply whose start this process missed
                    self._mend_soon(conversation_id, resync=True, first=(frame, text))
                    return
                following = self._following[conversation_id] = Following(message_id, 0)
            if seq <= following.seq:
                return  # passed on already
            if seq > following.seq + 1:
                self._mend_soon(conversation_id, resync=False, first=(frame, text))
                return
            following.seq = seq
        elif (
            kind == "done"
            and following is not None
            and following.message_id == frame["message_id"]
        ):
            del self._following[conversation_id]
        await self._deliver_local(conversation_id, frame, text)

    def _mend_soon(
        self, conversation_id: UUID, *, resync: bool, first: tuple[Frame, str] | None = None
    ) -> None:
        """Hold the conversation's frames while what was missed is mended."""
        if conversation_id in self._holding:
            if first is not None:
                self._holding[conversation_id].append(first)
            return
        self._holding[conversation_id] = [first] if first is not None else []
        task = asyncio.create_task(self._mend(conversation_id, resync), name="fanout-mend")
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _mend(self, conversation_id: UUID, resync: bool) -> None:
        """The missed deltas from the reply's runner; else a fresh `state` for the watchers
        here. Then what was held meanwhile, less what that already holds."""
        try:
            missed = [] if resync else await self._missed_deltas(conversation_id)
            if missed is None or resync:
                self._following.pop(conversation_id, None)
                streaming = await self._resync(conversation_id)
                if streaming is not None:
                    self._following[conversation_id] = Following(*streaming)
                else:
                    self._follow_first_held(conversation_id)
                missed = []
        except Exception:
            logger.warning("mending the frames of %s failed", conversation_id, exc_info=True)
            missed = []
        held = self._holding.pop(conversation_id, [])
        for frame in missed:
            await self._pass_on(conversation_id, frame, json.dumps(frame))
        for frame, text in held:
            await self._pass_on(conversation_id, frame, text)

    def _follow_first_held(self, conversation_id: UUID) -> None:
        """No runner said how far its reply is (it has just ended, or does not answer):
        go on from the first delta held, rather than mend again and again."""
        for frame, _ in self._holding.get(conversation_id, []):
            if frame.get("type") == "delta":
                following = Following(frame["message_id"], frame["seq"] - 1)
                self._following[conversation_id] = following
                return

    async def _missed_deltas(self, conversation_id: UUID) -> list[Frame] | None:
        """The deltas after the last passed on, from the runner; None if it cannot say."""
        following = self._following.get(conversation_id)
        if following is None:
            return None
        answer = await self._ask(conversation_id, following.seq)
        if answer is None or answer["message_id"] != following.message_id:
            return None
        deltas: list[Frame] = answer["deltas"]
        return deltas

    async def reply_so_far(
        self, conversation_id: UUID, after: int | None = None
    ) -> dict[str, Any] | None:
        """The running reply of a conversation that another process runs, as its runner
        tells it after this process hears the conversation's frames (so that none falls
        between): {"message_id", "seq", "content", "deltas": [the deltas after `after`]}.
        None when no process runs a reply there. Frames heard meanwhile wait, and only
        those after it are passed on."""
        if not await self.subscribed(conversation_id):
            return None
        holding = conversation_id not in self._holding
        if holding:
            self._holding[conversation_id] = []
        try:
            answer = await self._ask(conversation_id, after)
            if answer is not None:
                following = self._following.get(conversation_id)
                if following is None or following.message_id != answer["message_id"]:
                    following = Following(answer["message_id"], answer["seq"])
                    self._following[conversation_id] = following
        finally:
            if holding:
                for frame, text in self._holding.pop(conversation_id, []):
                    await self._pass_on(conversation_id, frame, text)
        return answer

    # --- The end --------------------------------------------------------------------------

    async def close(self) -> None:
        tasks = [t for t in (self._sending, self._listening, *self._repairs) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pubsub is not None:
            with suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()
