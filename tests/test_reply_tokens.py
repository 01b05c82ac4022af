"""`max_tokens` is asked for every reply, quota or not: CHAT_MAX_REPLY_TOKENS (README,
Configuration), so that no reply runs up the bill to whatever the server allows."""

from __future__ import annotations

import pytest

from chat import chats
from tests.llm_server import Behaviour

pytestmark = pytest.mark.django_db(transaction=True)


async def test_max_tokens_is_sent_by_default(llm, user, conversation, settings):
    assert settings.CHAT_TOKENS_PER_DAY == 0  # no quota to cap it
    assert settings.CHAT_MAX_REPLY_TOKENS == 4096  # the default
    llm.behaviour = Behaviour(tokens=3)

    started = await chats.service().send(user.pk, conversation.id, "Hello")
    message = await chats.service().finished(started)

    assert message is not None and message.status == "complete"
    assert [request["max_tokens"] for request in llm.requests] == [4096]


@pytest.mark.parametrize(("setting", "asked"), [(300, 300), (0, None)])
async def test_max_tokens_follows_the_setting(llm, user, conversation, settings, setting, asked):
    """A value of its own, or 0 for the server's default (no `max_tokens` at all)."""
    settings.CHAT_MAX_REPLY_TOKENS = setting
    llm.behaviour = Behaviour(tokens=3)

    started = await chats.service().send(user.pk, conversation.id, "Hello")
    await chats.service().finished(started)

    assert [request.get("max_tokens") for request in llm.requests] == [asked]
