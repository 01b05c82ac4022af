"""Paced reading: between two beats of the clock the model's socket is not read, so a
reply costs one read per frame, not one per token (issue 4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from chat.llm import ReplyStream, Upstream
from tests.llm_server import Behaviour, FakeLLM, expected_text
from tests.polling import wait_until

PROMPT = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def upstream(llm: FakeLLM) -> AsyncIterator[Upstream]:
    """A way to the model of this test's own: the streams here run without the service."""
    upstream = Upstream()
    yield upstream
    await upstream.aclose()


class Beats:
    """Releases a stream every `interval`, as the reply clock does, counting the releases."""

    def __init__(self, stream: ReplyStream, interval: float) -> None:
        self.stream, self.interval, self.count = stream, interval, 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Beats:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.count += 1
            self.stream.release()


async def paced_reads(stream: ReplyStream, interval: float = 0.05) -> tuple[list[str], int]:
    """Every read's text, and how many beats it took."""
    reads = []
    async with asyncio.timeout(10), Beats(stream, interval) as beats:
        async for text in stream.deltas():
            reads.append(text)
            stream.paced = True
    return reads, beats.count


async def test_a_paced_stream_reads_once_per_beat(llm: FakeLLM, upstream: Upstream) -> None:
    llm.behaviour = Behaviour(tokens=60, token_delay=0.005)
    stream = ReplyStream(upstream, "test-model", PROMPT)
    reads, beats = await paced_reads(stream)
    assert stream.pausable  # the SDK's aiohttp transport still lets us reach its socket
    assert "".join(reads) == expected_text(60)
    # The first read comes unasked; every later one waits for a beat. Unpaced, each of
    # the 60 tokens would be a read of its own.
    assert len(reads) <= beats + 1 < 60
    assert stream.usage is not None and stream.usage.completion_tokens == 60


async def test_an_unpaced_stream_reads_tokens_as_they_come(
    llm: FakeLLM, upstream: Upstream
) -> None:
    llm.behaviour = Behaviour(tokens=20, token_delay=0.01)
    stream = ReplyStream(upstream, "test-model", PROMPT)
    async with asyncio.timeout(10), aclosing(stream.deltas()) as deltas:
        reads = [text async for text in deltas]
    assert "".join(reads) == expected_text(20)
    assert len(reads) > 10


async def test_the_connection_is_reused_after_a_paced_stream(
    llm: FakeLLM, upstream: Upstream
) -> None:
    """A paused socket must never go back to the pool paused: the next request would hang."""
    llm.behaviour = Behaviour(tokens=10, token_delay=0.005)
    for _ in range(3):
        reads, _ = await paced_reads(ReplyStream(upstream, "test-model", PROMPT))
        assert "".join(reads) == expected_text(10)
    assert llm.completed_streams == 3


async def test_stopping_a_held_stream_closes_the_request(llm: FakeLLM, upstream: Upstream) -> None:
    """A stop while the socket is paused still hangs up on the model (and stops billing),
    and leaves no paused socket behind for the next request."""
    llm.behaviour = Behaviour(tokens=500, token_delay=0.01)
    stream = ReplyStream(upstream, "test-model", PROMPT)

    async def read_unreleased() -> None:
        async for _ in stream.deltas():
            stream.paced = True  # and no beat ever comes: it stays held after this read

    reader = asyncio.create_task(read_unreleased())
    async with asyncio.timeout(5):
        await wait_until(lambda: stream.held)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    async with asyncio.timeout(5):
        await wait_until(lambda: llm.disconnects == 1)
    llm.behaviour = Behaviour(tokens=5)
    reads, _ = await paced_reads(ReplyStream(upstream, "test-model", PROMPT))
    assert "".join(reads) == expected_text(5)
