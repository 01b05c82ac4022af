"""Smoke test against the real bundled model: SmolLM2-135M on llama.cpp's server."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from chat import chats, local_model
from tests.chat_socket import deltas_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.local_model]

SLOW_MODEL_TIMEOUT = 60  # seconds a socket waits for each frame of the bundled model

if not local_model.installed():
    if os.environ.get("CHAT_REQUIRE_LOCAL_MODEL"):
        raise RuntimeError("CHAT_REQUIRE_LOCAL_MODEL is set but the `local` extra is missing")
    pytest.skip("the `local` extra is not installed (make install-local)", allow_module_level=True)


@pytest.fixture(scope="module")
def model_server() -> Iterator[local_model.LocalModelServer]:
    with local_model.LocalModelServer() as server:
        server.start()
        yield server


@pytest.fixture
async def local_llm(model_server, settings) -> AsyncIterator[local_model.LocalModelServer]:
    settings.OPENAI_BASE_URL = model_server.base_url
    settings.OPENAI_API_KEY = ""
    settings.CHAT_READ_TIMEOUT = 60
    settings.CHAT_UPSTREAM_CONCURRENCY = 1
    settings.CHAT_CONTEXT_TOKENS = local_model.PROMPT_BUDGET
    settings.CHAT_MAX_REPLY_TOKENS = local_model.REPLY_TOKENS
    yield model_server
    await chats.service().stop_all()


@pytest.fixture
def conversation(conversation):
    """The suite's conversation, on the bundled model."""
    conversation.model = local_model.MODEL_NAME
    conversation.save(update_fields=["model"])
    return conversation


async def first_delta_after_send(socket, content: str) -> tuple[float, list[dict[str, Any]]]:
    started = time.monotonic()
    await socket.send(type="send", content=content)
    frames = await socket.receive_until("delta")
    return time.monotonic() - started, frames


async def test_local_model_replies_with_usage(
    local_llm, user, conversation, open_socket, settings
):
    settings.CHAT_MAX_REPLY_TOKENS = 48
    socket = await open_socket(user, conversation.id, frame_timeout=SLOW_MODEL_TIMEOUT)
    await socket.send(type="send", content="What is the capital of France?")
    frames = await socket.receive_until("done")
    done = frames[-1]
    assert done["status"] == "complete", done
    assert done["content"].strip() and deltas_text(frames, done["message_id"]) == done["content"]
    assert done["usage"]["completion_tokens"] > 0 and done["usage"]["prompt_tokens"] > 0


async def test_local_model_stops_generating_on_stop(
    local_llm, user, conversation, open_socket, settings
):
    settings.CHAT_MAX_REPLY_TOKENS = 2000
    socket = await open_socket(user, conversation.id, frame_timeout=SLOW_MODEL_TIMEOUT)
    await first_delta_after_send(socket, "Count from 1 to 1000, one number per line.")
    await socket.send(type="stop")
    assert (await socket.receive_until("done"))[-1]["status"] == "stopped"

    # Had llama.cpp kept generating the 2000 tokens, this reply would wait for it (the
    # server serves one request at a time): tens of seconds, not a moment.
    settings.CHAT_MAX_REPLY_TOKENS = 16
    waited, _ = await first_delta_after_send(socket, "Say hello.")
    print(f"first token after a stop: {waited:.2f} s")
    assert waited < 8
    assert (await socket.receive_until("done"))[-1]["status"] == "complete"
