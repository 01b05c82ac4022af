"""`chat.batching.Batcher`: requests that arrive together share one step, and each caller
gets its own result."""

from __future__ import annotations

import asyncio
import threading

import pytest

from chat.batching import Batcher
from tests.polling import wait_until


class Step:
    """A step that records its batches; it answers a request of -1 with an error."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail = False

    async def __call__(self, requests: list[int]) -> list[int | Exception]:
        self.batches.append(requests)
        # Time passes on purpose, as on a trip to the ORM thread: requests that arrive
        # meanwhile must wait for the next step.
        await asyncio.sleep(0.01)
        if self.fail:
            raise ConnectionError("the database is gone")
        return [ValueError(f"bad {r}") if r < 0 else r * 10 for r in requests]


async def step_started(step: Step) -> None:
    """Wait until the first step is running. Checked at every turn of the event loop: the
    step lasts only 10 ms."""
    async with asyncio.timeout(1):
        await wait_until(lambda: bool(step.batches), interval=0)


async def test_requests_that_arrive_together_share_a_step() -> None:
    step = Step()
    batcher = Batcher(step, key=lambda r: r)
    results = await asyncio.gather(*(batcher.submit(r) for r in range(1, 8)))
    assert results == [10, 20, 30, 40, 50, 60, 70]
    assert step.batches == [[1, 2, 3, 4, 5, 6, 7]]


async def test_requests_arriving_during_a_step_go_in_the_next() -> None:
    step = Step()
    batcher = Batcher(step, key=lambda r: r)
    first = asyncio.create_task(batcher.submit(1))
    await step_started(step)
    assert await asyncio.gather(first, *(batcher.submit(r) for r in range(2, 6))) == [
        10,
        20,
        30,
        40,
        50,
    ]
    assert step.batches == [[1], [2, 3, 4, 5]]


async def test_an_error_reaches_its_own_caller_only() -> None:
    batcher = Batcher(Step(), key=lambda r: r)
    results = await asyncio.gather(
        *(batcher.submit(r) for r in (1, -1, 2)), return_exceptions=True
    )
    assert results[0] == 10 and results[2] == 20
    assert isinstance(results[1], ValueError)


async def test_a_failed_step_fails_its_whole_batch_and_the_next_one_runs() -> None:
    step = Step()
    batcher = Batcher(step, key=lambda r: r)
    step.fail = True
    results = await asyncio.gather(*(batcher.submit(r) for r in (1, 2)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    step.fail = False
    assert await batcher.submit(3) == 30


async def test_batches_are_bounded_and_keys_never_share_one() -> None:
    step = Step()
    batcher = Batcher(step, max_size=3, key=lambda r: r % 4)
    await asyncio.gather(*(batcher.submit(r) for r in [0, 1, 5, 2, 3, 6, 4]))
    assert len(step.batches) >= 3
    for batch in step.batches:
        assert len(batch) <= 3
        assert len({r % 4 for r in batch}) == len(batch)
    assert sorted(r for batch in step.batches for r in batch) == [0, 1, 2, 3, 4, 5, 6]


async def test_a_caller_that_stopped_waiting_is_left_out() -> None:
    step = Step()
    batcher = Batcher(step, key=lambda r: r)
    first = asyncio.create_task(batcher.submit(1))
    await step_started(step)
    gone = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)  # one turn of the loop: both tasks submit, and wait
    gone.cancel()
    assert await first == 10 and await kept == 30
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert step.batches == [[1], [3]]


def test_each_event_loop_gets_its_own_worker() -> None:
    """Requests of two loops at once (threads, tests) never wait on the other's worker."""
    step = Step()
    batcher = Batcher(step, key=lambda r: r)
    results: dict[str, list[int]] = {}

    async def submit_all(requests: range) -> list[int]:
        answers = []
        for request in requests:  # one after another: the two loops interleave
            answers.append(await batcher.submit(request))
        return answers

    def run(name: str, requests: range) -> None:
        results[name] = asyncio.run(submit_all(requests))

    threads = [
        threading.Thread(target=run, args=("one", range(1, 6))),
        threading.Thread(target=run, args=("two", range(11, 16))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == {"one": [10, 20, 30, 40, 50], "two": [110, 120, 130, 140, 150]}
