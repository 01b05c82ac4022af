"""Fixtures shared by the whole suite: users and their conversations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser

from chat.models import Conversation

PASSWORD = "correct horse battery staple"


@pytest.fixture
def user(db: None) -> AbstractBaseUser:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def other_user(db: None) -> AbstractBaseUser:
    return get_user_model().objects.create_user("mallory", password=PASSWORD)


@pytest.fixture
def make_conversation(db: None) -> Callable[..., Conversation]:
    def make(owner: AbstractBaseUser, **fields: Any) -> Conversation:
        fields.setdefault("model", "test-model")
        return Conversation.objects.create(owner=owner, **fields)

    return make
