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


# What a reply's `done` holds for usage when none was counted.
NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "estimated": True}


def done_frame(
    message_id: Any,
    status: str,
    content: str,
    usage: dict[str, int | bool] | None,
    error: dict[str, str] | None,
) -> dict[str, Any]:
    """The `done` frame of a reply that ended: however it ended, and on whichever process."""
    return {
        "type": "done",
        "message_id": str(message_id),
        "status": status,
        "content": content,
        "usage": usage or dict(NO_USAGE),
        "error": error,
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
