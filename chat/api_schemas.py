"""The JSON API's request and response bodies, as django-ninja schemas.

Responses are the dicts of `chat.serializers` (the websocket's shapes), checked against
these schemas on the way out; they also make the OpenAPI document. Timestamps and ids
stay strings, so that the API sends exactly what the websocket sends.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from ninja import Schema
from pydantic import ConfigDict, Field

from chat.chats import MAX_TITLE_LENGTH

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Id = Annotated[str, Field(json_schema_extra={"format": "uuid"})]


# --- Errors ---------------------------------------------------------------------------------


class ErrorDetail(Schema):
    code: str
    detail: str


class ErrorOut(Schema):
    error: ErrorDetail


# --- Conversations and messages -------------------------------------------------------------


class Usage(Schema):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool


class MessageOut(Schema):
    id: Id
    role: Literal["user", "assistant"]
    content: str
    status: Literal["streaming", "complete", "stopped", "failed", "interrupted"]
    model: str
    created_at: Timestamp
    usage: Usage | None
    error: ErrorDetail | None


class ConversationOut(Schema):
    id: Id
    title: str
    model: str
    system_prompt: str
    created_at: Timestamp
    updated_at: Timestamp


class TranscriptOut(ConversationOut):
    messages: list[MessageOut]


class ConversationPage(Schema):
    results: list[ConversationOut]
    next: str | None = Field(description="The `cursor` of the next page; null on the last.")


class TranscriptFile(Schema):
    """The JSON export."""

    conversation: ConversationOut
    messages: list[MessageOut]


class ModelsOut(Schema):
    models: list[str]
    default: str


class SentOut(Schema):
    user_message: MessageOut | None = Field(description="The message posted; null for regenerate.")
    assistant_message: MessageOut | None = Field(
        description="The reply as saved; null when a retried `client_msg_id` posted nothing."
    )


# --- Input ----------------------------------------------------------------------------------


class ConversationIn(Schema):
    # Unknown fields are refused, so that a typo shows instead of being ignored.
    model_config = ConfigDict(extra="forbid")

    title: str = Field(default="", description=f"At most {MAX_TITLE_LENGTH} characters.")
    model: str = Field(default="", description="One of GET /api/models/; empty: the default.")
    system_prompt: str = ""


class ConversationChange(Schema):
    """Only the fields sent are changed."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(default="", description=f"At most {MAX_TITLE_LENGTH} characters.")
    model: str = ""
    system_prompt: str = ""


class MessageIn(Schema):
    model_config = ConfigDict(extra="forbid")

    content: str
    client_msg_id: UUID | None = Field(
        default=None, description="Sent again with a retry, so that the message is posted once."
    )
