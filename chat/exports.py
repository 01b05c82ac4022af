"""A whole conversation as a file to download: Markdown to read, JSON to process."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse
from django.utils.text import slugify

from chat.models import Message
from chat.persistence import State
from chat.serializers import conversation_json, message_json

FORMATS = {"md": "text/markdown; charset=utf-8", "json": "application/json"}


def export_response(state: State, format: str) -> HttpResponse:
    """The transcript in `format` (one of FORMATS), as an attachment named after its title."""
    body = as_markdown(state) if format == "md" else as_json(state)
    response = HttpResponse(body, content_type=FORMATS[format])
    response["Content-Disposition"] = f'attachment; filename="{filename(state, format)}"'
    return response


def filename(state: State, extension: str) -> str:
    conversation = state.conversation
    # A slug needs no quoting in the header and is safe on every file system.
    stem = slugify(conversation.title) or f"conversation-{str(conversation.pk)[:8]}"
    return f"{stem}.{extension}"


# --- JSON -------------------------------------------------------------------------------------


def as_json(state: State) -> str:
    return json.dumps(export_json(state), indent=2, ensure_ascii=False)


def export_json(state: State) -> dict[str, Any]:
    """The conversation and all its messages, oldest first, in the API's shapes."""
    return {
        "conversation": conversation_json(state.conversation),
        "messages": [message_json(m) for m in state.messages],
    }


# --- Markdown ---------------------------------------------------------------------------------


def as_markdown(state: State) -> str:
    conversation = state.conversation
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    lines.append(f"- Model: {conversation.model}")
    lines.append(f"- Started: {conversation.created_at.isoformat()}")
    lines.append(f"- Last changed: {conversation.updated_at.isoformat()}")
    if conversation.system_prompt:
        lines += ["", "## System prompt", "", conversation.system_prompt]
    for message in state.messages:
        lines += ["", *message_markdown(message)]
    return "\n".join(lines) + "\n"


def message_markdown(message: Message) -> list[str]:
    """One message: a heading with its role and time, its status unless complete, its text
    and, for a reply, the tokens it used."""
    role = "User" if message.role == Message.Role.USER else "Assistant"
    heading = f"## {role}"
    if message.model and message.role == Message.Role.ASSISTANT:
        heading += f" ({message.model})"
    lines = [f"{heading} · {message.created_at.isoformat()}", ""]
    if message.status != Message.Status.COMPLETE:
        lines += [f"_Status: {message.status}_", ""]
    if message.error is not None:
        lines += [f"_Error: {message.error['code']}: {message.error['detail']}_", ""]
    lines.append(message.content)
    usage = message.usage
    if usage is not None:
        estimated = " (estimated)" if usage["estimated"] else ""
        lines += [
            "",
            f"_Usage: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} "
            f"completion = {usage['total_tokens']} tokens{estimated}_",
        ]
    return lines
