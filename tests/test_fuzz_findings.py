"""What the fuzz found (bench/fuzz.md), each as a test of its own."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import AsyncClient

from chat.models import Conversation, Message
from tests.api_client import LIST_URL, atoken_headers

pytestmark = pytest.mark.django_db(transaction=True)


async def test_search_with_nul_finds_what_was_stored_with_it(user: Any) -> None:
    # PostgreSQL refuses NUL in any text, a query's too: `?q=%00` was a 500 there. Text
    # is stored with U+FFFD for NUL, and searched for the same way.
    conversation = await Conversation.objects.acreate(owner=user, model="test-model")
    await Message.objects.acreate(conversation=conversation, role="user", content="a\ufffdb")
    headers = await atoken_headers(user)

    response = await AsyncClient().get(LIST_URL, {"q": "a\x00b"}, headers=headers)

    assert response.status_code == 200
    assert [c["id"] for c in response.json()["results"]] == [str(conversation.pk)]
