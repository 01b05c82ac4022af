"""The fake model server, checked through the real OpenAI SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.llm_server import Behaviour, FakeLLM, expected_text
from tests.polling import wait_until

MESSAGES: list[Any] = [{"role": "user", "content": "Say something, please."}]


@pytest.fixture
def server() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
async def client(server: FakeLLM) -> AsyncIterator[openai.AsyncOpenAI]:
    timeout = openai.Timeout(0.5, connect=1.0)
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="test", max_retries=0, timeout=timeout
    ) as client:
        yield client


async def collect(
    client: openai.AsyncOpenAI, model: str = "test-model", **options: Any
) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, **options
    )
    async with stream:
        return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# Replies


async def test_stream_reply_is_the_expected_text(server, client):
    server.behaviour.tokens = 7
    chunks = await collect(client, stream_options={"include_usage": True})

    assert text_of(chunks) == expected_text(7) == "w0 w1 w2 w3 w4 w5 w6 "
    first, finish, usage = chunks[0], chunks[-2], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (3, 7)
    assert usage.usage.total_tokens == 10
    assert {(c.id, c.object, c.model) for c in chunks} == {
        (first.id, "chat.completion.chunk", "test-model")
    }
    assert server.completed_streams == 1
    assert server.requests[0]["messages"] == MESSAGES


@pytest.mark.parametrize(
    ("include_usage", "send_usage"), [(False, True), (True, False)], ids=["unasked", "withheld"]
)
async def test_stream_reply_usage_absent(server, client, include_usage, send_usage):
    server.behaviour.send_usage = send_usage
    chunks = await collect(client, stream_options={"include_usage": include_usage})

    assert text_of(chunks) == expected_text(20)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_stream_reply_custom_words(server, client):
    server.behaviour.words = ["<b>", "bold", "</b>"]
    assert text_of(await collect(client)) == "<b>bold</b>"


async def test_completion_not_streamed(server, client):
    server.behaviour.tokens = 4
    completion = await client.chat.completions.create(model="test-model", messages=MESSAGES)

    assert completion.choices[0].message.content == expected_text(4)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4


async def test_models_listed(server, client):
    server.models["other-model"] = Behaviour()
    names = [model.id async for model in client.models.list()]
    assert names == ["test-model", "other-model"]


async def test_stream_paced_by_delays(server, client):
    server.behaviour = Behaviour(tokens=5, first_token_delay=0.1, token_delay=0.05)
    started = time.monotonic()
    chunks = await collect(client)
    assert text_of(chunks) == expected_text(5)
    assert 0.3 <= time.monotonic() - started < 1.0


# Faults


@pytest.mark.parametrize(
    ("fault", "error"), [("429", openai.RateLimitError), ("500", openai.InternalServerError)]
)
async def test_fault_http_status(server, client, fault, error):
    server.behaviour.fault = fault
    with pytest.raises(error) as caught:
        await collect(client)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"]


async def test_fault_429_retried_quickly_by_sdk(server):
    server.behaviour.fault = "429"
    started = time.monotonic()
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=2) as c:
        with pytest.raises(openai.RateLimitError):
            await collect(c)
    assert len(server.requests) == 3
    assert time.monotonic() - started < 1.0


async def test_fault_cut_fails_iteration(server, client):
    server.behaviour = Behaviour(fault="cut", fault_after=3)
    received: list[str] = []
    stream = await client.chat.completions.create(
        model="test-model", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIConnectionError) as caught:
        async with stream:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == expected_text(3)
    assert "incomplete chunked read" in str(caught.value.__cause__)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert server.completed_streams == server.disconnects == 0


async def test_fault_malformed_chunk_fails_parsing(server, client):
    server.behaviour = Behaviour(fault="malformed", fault_after=2)
    # The SDK does not wrap this one in an openai error.
    with pytest.raises(json.JSONDecodeError):
        await collect(client)


async def test_fault_error_event_raises_api_error(server, client):
    server.behaviour = Behaviour(fault="error_event", fault_after=2)
    with pytest.raises(openai.APIError) as caught:
        await collect(client)
    assert type(caught.value) is openai.APIError
    assert caught.value.type == "server_error"
    assert caught.value.body == {
        "message": "The model failed mid-stream.",
        "type": "server_error",
    }


async def test_fault_stall_trips_read_timeout(server, client):
    server.behaviour = Behaviour(fault="stall", fault_after=2)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await collect(client)
    assert time.monotonic() - started < 2.0
    async with asyncio.timeout(1):
        await wait_until(lambda: server.disconnects == 1)
    assert server.active_streams == 0


async def test_fault_stall_resumes_after_stall_seconds(server, client):
    server.behaviour = Behaviour(tokens=4, fault="stall", fault_after=2, stall_seconds=0.2)
    assert text_of(await collect(client)) == expected_text(4)


# Instrumentation


async def test_early_close_counts_disconnect(server, client):
    server.behaviour = Behaviour(tokens=100, token_delay=0.05)
    stream = await client.chat.completions.create(
        model="test-model", messages=MESSAGES, stream=True
    )
    await anext(stream)
    await anext(stream)
    assert server.active_streams == 1
    await stream.close()

    async with asyncio.timeout(0.5):
        await wait_until(lambda: server.disconnects == 1)
    assert server.active_streams == 0
    assert server.completed_streams == 0


async def test_per_model_behaviours_concurrent(server, client):
    server.models["slow-model"] = Behaviour(tokens=3, token_delay=0.05)
    server.models["failing-model"] = Behaviour(fault="500")

    slow, default, failing = await asyncio.gather(
        collect(client, "slow-model"),
        collect(client),
        collect(client, "failing-model"),
        return_exceptions=True,
    )

    assert isinstance(slow, list)
    assert isinstance(default, list)
    assert text_of(slow) == expected_text(3)
    assert text_of(default) == expected_text(20)
    assert isinstance(failing, openai.InternalServerError)
    assert sorted(r["model"] for r in server.requests) == [
        "failing-model",
        "slow-model",
        "test-model",
    ]


async def test_stop_with_open_stream_is_prompt():
    server = FakeLLM(Behaviour(fault="stall", fault_after=1))
    server.start()
    slow = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
    async with slow:
        stream = await slow.chat.completions.create(
            model="test-model", messages=MESSAGES, stream=True
        )
        await anext(stream)
        async with asyncio.timeout(5):
            await wait_until(lambda: server.active_streams == 1)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 1.0
        with pytest.raises(openai.APIConnectionError):
            async with stream:
                async for _ in stream:
                    pass
    assert server.disconnects == 0


def test_command_line_prints_base_url():
    command = [sys.executable, "-m", "tests.llm_server", "--tokens", "3", "--rate", "100"]
    # The command is fixed: this interpreter and our own module.
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:  # noqa: S603
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            assert base_url.endswith("/v1")
            with openai.OpenAI(base_url=base_url, api_key="test", max_retries=0) as sync_client:
                completion = sync_client.chat.completions.create(
                    model="test-model", messages=MESSAGES
                )
            assert completion.choices[0].message.content == expected_text(3)
        finally:
            process.terminate()
    assert process.returncode == 0
