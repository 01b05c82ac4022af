"""A broken upstream fails one reply cleanly: partial text kept, a clear code, the next works."""

from __future__ import annotations

import logging

import pytest
from asgiref.sync import sync_to_async

from chat.models import Conversation, Message
from tests.llm_server import Behaviour, expected_text

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("fault", "code", "partial_tokens"),
    [
        ("429", "upstream_rate_limited", 0),
        ("500", "upstream_error", 0),
        ("stall", "upstream_timeout", 3),
        ("cut", "upstream_disconnected", 3),
        ("malformed", "upstream_malformed", 3),
        ("error_event", "upstream_error", 3),
    ],
)
async def test_upstream_fault_fails_reply_and_next_message_works(
    llm, user, make_conversation, open_socket, caplog, fault, code, partial_tokens
):
    llm.models["broken"] = Behaviour(fault=fault, fault_after=3, stall_seconds=5)
    conversation: Conversation = await sync_to_async(make_conversation)(user, model="broken")
    socket = await open_socket(user, conversation.id)

    with caplog.at_level(logging.INFO):
        await socket.send(type="send", content="Hello")
        done = (await socket.receive_until("done"))[-1]

    assert done["status"] == "failed"
    assert done["error"]["code"] == code and done["error"]["detail"]
    assert done["content"] == expected_text(partial_tokens)
    stored = await Message.objects.aget(pk=done["message_id"])
    assert (stored.status, stored.error_code) == ("failed", code)
    assert stored.content == expected_text(partial_tokens)
    # An upstream failure is the model's, not ours: logged in a line, never a traceback.
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]

    conversation.model = "test-model"
    await conversation.asave(update_fields=["model"])
    await socket.send(type="send", content="Again")
    done = (await socket.receive_until("done"))[-1]
    assert (done["status"], done["content"]) == ("complete", expected_text(20))


async def test_unreachable_upstream_fails_reply(llm, user, conversation, open_socket, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    settings.CHAT_MAX_RETRIES = 0
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Anyone?")
    done = (await socket.receive_until("done"))[-1]
    assert (done["status"], done["error"]["code"]) == ("failed", "upstream_unreachable")


async def test_server_without_usage_gets_estimated_usage(llm, user, conversation, open_socket):
    llm.behaviour = Behaviour(tokens=12, send_usage=False)
    socket = await open_socket(user, conversation.id)
    await socket.send(type="send", content="Count for me")
    done = (await socket.receive_until("done"))[-1]
    usage = done["usage"]
    assert usage["estimated"] and usage["completion_tokens"] == 12 and usage["prompt_tokens"] > 0
    stored = await Message.objects.aget(pk=done["message_id"])
    assert stored.usage_estimated and stored.total_tokens == usage["total_tokens"]


async def test_upstream_error_body_is_trimmed_for_the_user_and_logged_whole(
    llm, user, make_conversation, open_socket, caplog
):
    secret_trace = "Traceback (most recent call last):\n  File '/srv/model/internal.py'"
    llm.models["verbose"] = Behaviour(
        fault="500", error_message="CUDA out of memory. " + "x" * 400 + "\n" + secret_trace
    )
    conversation = await sync_to_async(make_conversation)(user, model="verbose")
    socket = await open_socket(user, conversation.id)
    with caplog.at_level(logging.WARNING):
        await socket.send(type="send", content="Hello")
        done = (await socket.receive_until("done"))[-1]
    detail = done["error"]["detail"]
    assert detail.startswith("The model's server answered 500: CUDA out of memory.")
    assert "Traceback" not in detail and "internal.py" not in detail and len(detail) < 300
    assert any("internal.py" in record.getMessage() for record in caplog.records)
