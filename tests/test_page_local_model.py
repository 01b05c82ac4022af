"""The conversation page says plainly when the model is the bundled offline one, and how to
point the app at a real endpoint instead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from chat.models import Conversation
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("local", [True, False])
def test_page_says_when_the_model_is_the_small_offline_one(
    client: Client,
    user: User,
    make_conversation: Callable[..., Conversation],
    settings: Any,
    local: bool,
) -> None:
    settings.CHAT_LOCAL_MODEL = local
    conversation = make_conversation(user)
    assert client.login(username=user.get_username(), password=PASSWORD)

    html = client.get(reverse("chat:conversation", args=[conversation.id])).content.decode()

    said = "small model that runs offline" in html and "OPENAI_BASE_URL" in html
    assert said is local
