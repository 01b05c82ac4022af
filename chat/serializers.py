"""The JSON shape of conversations and messages, shared by the websocket, the API and exports."""

from __future__ import annotations

from typing import Any

from chat.models import Conversation, Message


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "model": message.model,
        "created_at": message.created_at.isoformat(),
        "usage": message.usage,
        "error": message.error,
    }


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }
