"""The receiving side of the fan-out (`chat.fanout.FanOut`) on a real Redis: frames that
never arrived are mended, each frame is passed on once and in order. The runner that
tells the missed deltas is played by the test (a reply's whole text is known here); the
two processes of tests/test_fanout.py run the real one."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import Redis as BlockingRedis
from redis.asyncio import Redis

from bench.processes import free_port
from chat.fanout import FanOut, channel_of
from tests.live_tabs import REDIS_URL
from tests.polling import wait_until
from tests.private_redis import redis_server

MESSAGE = str(uuid.uuid4())


def delta(seq: int) -> dict[str, Any]:
    return {"type": "delta", "message_id": MESSAGE, "seq": seq, "text": f"w{seq} "}


class Receiver:
    """A process with watchers of one conversation: what its watchers got."""

    def __init__(self, runner_seq: int = 0, url: str = REDIS_URL) -> None:
        self.conversation_id = uuid.uuid4()
        self.delivered: list[dict[str, Any]] = []
        self.asked: list[int | None] = []
        self.resyncs = 0
        self.runner_seq = runner_seq  # how far the played runner's reply is; 0: none runs
        self.fanout = FanOut(url, self.deliver, self.ask, self.resync)

    async def deliver(self, conversation_id: uuid.UUID, frame: dict[str, Any], text: str) -> None:
        assert json.loads(text) == frame
        self.delivered.append(frame)

    async def ask(self, conversation_id: uuid.UUID, after: int | None) -> dict[str, Any] | None:
        self.asked.append(after)
        if not self.runner_seq:
            return None
        deltas = [delta(seq) for seq in range((after or 0) + 1, self.runner_seq + 1)]
        return {"message_id": MESSAGE, "seq": self.runner_seq, "content": "", "deltas": deltas}

    async def resync(self, conversation_id: uuid.UUID) -> tuple[str, int] | None:
        self.resyncs += 1
        state = {"type": "state", "streaming": {"message_id": MESSAGE, "seq": self.runner_seq}}
        self.delivered.append(state)
        return (MESSAGE, self.runner_seq) if self.runner_seq else None

    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.delivered if f["type"] == "delta"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    found.fanout.watch(found.conversation_id)
    assert await found.fanout.subscribed(found.conversation_id)
    yield found
    await found.fanout.close()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def publish(redis: Redis, receiver: Receiver, *frames: dict[str, Any]) -> None:
    """As another process publishes them."""
    for frame in frames:
        await redis.publish(channel_of(receiver.conversation_id), "elsewhere " + json.dumps(frame))


async def test_frames_in_order_are_passed_on_as_they_come(receiver, redis):
    await publish(redis, receiver, *(delta(seq) for seq in range(1, 6)))
    async with asyncio.timeout(5):
        await wait_until(lambda: len(receiver.delivered) == 5)
    assert receiver.seqs() == [1, 2, 3, 4, 5] and receiver.asked == []


async def test_a_gap_is_filled_from_the_runner(receiver, redis):
    receiver.runner_seq = 7
    await publish(redis, receiver, delta(1), delta(2), delta(5), delta(6), delta(7), delta(8))
    async with asyncio.timeout(5):
        await wait_until(lambda: receiver.seqs()[-1:] == [8])
    assert receiver.seqs() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert receiver.asked == [2] and receiver.resyncs == 0


async def test_a_delta_heard_twice_is_passed_on_once(receiver, redis):
    await publish(redis, receiver, delta(1), delta(2), delta(2), delta(1), delta(3))
    async with asyncio.timeout(5):
        await wait_until(lambda: receiver.seqs()[-1:] == [3])
    assert receiver.seqs() == [1, 2, 3]


async def test_a_reply_whose_start_was_missed_resyncs(receiver, redis):
    """Deltas of a reply first heard of mid-way: the watchers here missed its start."""
    receiver.runner_seq = 4
    await publish(redis, receiver, delta(4), delta(5))
    async with asyncio.timeout(5):
        await wait_until(lambda: receiver.seqs()[-1:] == [5])
    kinds = [f["type"] for f in receiver.delivered]
    assert kinds == ["state", "delta"] and receiver.seqs() == [5]


async def test_a_gap_no_runner_can_fill_resyncs(receiver, redis):
    """The reply ended meanwhile (no process runs it): a fresh state, then on."""
    await publish(redis, receiver, delta(1), delta(4))
    async with asyncio.timeout(5):
        await wait_until(lambda: receiver.resyncs == 1 and receiver.seqs()[-1:] == [4])
    assert receiver.seqs() == [1, 4] and receiver.asked == [1]


async def test_its_own_frames_are_not_passed_on_twice(receiver):
    receiver.fanout.publish(receiver.conversation_id, json.dumps(delta(1)))
    await asyncio.sleep(0.3)  # time for the echo to come back, had it been passed on
    assert receiver.delivered == []


async def test_a_cut_connection_comes_back_and_resyncs(receiver, redis):
    await publish(redis, receiver, delta(1))
    async with asyncio.timeout(5):
        await wait_until(lambda: receiver.seqs() == [1])
    receiver.runner_seq = 3

    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    async with asyncio.timeout(5):
        await wait_until(lambda: receiver.resyncs == 1)
    assert await receiver.fanout.subscribed(receiver.conversation_id)
    await publish(redis, receiver, delta(4))
    async with asyncio.timeout(5):
        await wait_until(lambda: receiver.seqs()[-1:] == [4])
    assert receiver.seqs() == [1, 4]  # 2 and 3 are in the fresh state


async def test_deltas_nobody_else_hears_are_mostly_not_published(receiver, redis):
    """Only this process listens: after the first, one delta per PROBE_SECONDS goes to
    Redis; once another process listens (a probe reaches it), every delta goes again."""
    conversation_id = receiver.conversation_id
    message = json.dumps({"type": "message", "message": {}})
    receiver.fanout.publish(conversation_id, message)
    for seq in range(1, 21):
        receiver.fanout.publish(conversation_id, json.dumps(delta(seq)), delta=True)
        await asyncio.sleep(0.01)
    assert receiver.fanout.published <= 3  # the message, the first delta, perhaps a probe

    listener = redis.pubsub()
    await listener.subscribe(channel_of(conversation_id))
    await asyncio.sleep(1.0)  # a probe is due
    for seq in range(21, 26):
        receiver.fanout.publish(conversation_id, json.dumps(delta(seq)), delta=True)
        await asyncio.sleep(0.05)
    heard: list[int] = []
    async with asyncio.timeout(5):
        while len(heard) < 5:
            got = await listener.get_message(ignore_subscribe_messages=True, timeout=1)
            if got is not None:
                heard.append(json.loads(got["data"].split(b" ", 1)[1])["seq"])
    await listener.aclose()
    assert heard == [21, 22, 23, 24, 25]


# Over Redis' capacity for a subscriber's unread output, forced: a burst of deltas this
# large (10 MB) while the receiver reads nothing, against a limit of 256 KB.
BURST, BURST_TEXT = 200, "x" * 50_000


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs Debian's redis-server")
async def test_a_subscriber_cut_off_for_falling_behind_recovers(tmp_path):
    """Redis drops what it cannot hold for a subscriber that falls behind (over its
    `client-output-buffer-limit`, it closes the connection and the unsent frames are gone),
    as channels' layer drops over a channel's capacity. The receiver mends it by itself: it
    comes back, resyncs, and passes on the frames after, in order, none twice."""
    port, log = free_port(), tmp_path / "redis.log"
    with redis_server(port, "--client-output-buffer-limit", "pubsub 256kb 0 0", log=log):
        receiver = Receiver(url=f"redis://127.0.0.1:{port}/0")
        channel = channel_of(receiver.conversation_id)
        publisher = BlockingRedis(port=port)
        try:
            receiver.fanout.watch(receiver.conversation_id)
            assert await receiver.fanout.subscribed(receiver.conversation_id)
            publisher.publish(channel, "elsewhere " + json.dumps(delta(1)))
            async with asyncio.timeout(5):
                await wait_until(lambda: receiver.seqs() == [1])

            # The burst goes out while this loop (the receiver's) is held: a process busy
            # elsewhere, reading nothing.
            receiver.runner_seq = BURST + 1
            with publisher.pipeline(transaction=False) as pipe:
                for seq in range(2, BURST + 2):
                    frame = {**delta(seq), "text": BURST_TEXT}
                    pipe.publish(channel, "elsewhere " + json.dumps(frame))
                pipe.execute()
            async with asyncio.timeout(10):
                await wait_until(lambda: receiver.resyncs == 1)
            assert await receiver.fanout.subscribed(receiver.conversation_id)

            publisher.publish(channel, "elsewhere " + json.dumps(delta(BURST + 2)))
            async with asyncio.timeout(5):
                await wait_until(lambda: receiver.seqs()[-1:] == [BURST + 2])
        finally:
            publisher.close()
            await receiver.fanout.close()
    assert "output buffer limits" in log.read_text()  # Redis' own word for the cut
    seqs = receiver.seqs()
    assert len(seqs) < BURST + 2  # some deltas never reached it: the fresh state holds them
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
