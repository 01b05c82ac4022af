"""The JSON and SSE API (README, "JSON API"), on django-ninja.

The views are adapters: they read the request, know who asks (`chat.api_auth`), call the
chat service and translate what it answers or refuses. Every error is JSON
`{"error": {"code", "detail"}}`; the OpenAPI document is at /api/openapi.json.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views import csrf
from ninja import HeaderEx, NinjaAPI, P, Query, QueryEx, Schema, Status
from ninja.errors import HttpError, ValidationError
from pydantic import Field

from chat import exports, sse
from chat.api_auth import AUTH, CsrfFailed, session_key
from chat.api_schemas import (
    ConversationChange,
    ConversationIn,
    ConversationOut,
    ConversationPage,
    ErrorOut,
    MessageIn,
    ModelsOut,
    SentOut,
    TranscriptFile,
    TranscriptOut,
)
from chat.chats import Started, default_model, service
from chat.conversation_store import Position
from chat.models import Conversation, Message
from chat.refusals import STATUS, Refused
from chat.serializers import conversation_json, message_json

logger = logging.getLogger(__name__)

PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

api = NinjaAPI(
    title="Chat API",
    version="1",
    description="Conversations with a language model; replies stream as server-sent events.",
    urls_namespace="api",
    auth=AUTH,
    # Swagger UI needs ninja's static files ("ninja" in INSTALLED_APPS) to pass the CSP;
    # the document itself is enough for clients and generators.
    docs_url=None,
)


# --- Errors ---------------------------------------------------------------------------------


def error_response(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's CSRF refusal (`CSRF_FAILURE_VIEW`): for the API, in its JSON error shape;
    for the pages, Django's own page."""
    if request.path_info.startswith("/api/"):
        detail = f"CSRF check failed: {reason} Send the csrftoken cookie's value as X-CSRFToken."
        return error_response(403, "csrf_failed", detail)
    return csrf.csrf_failure(request, reason)


@api.exception_handler(Refused)
def refused(request: HttpRequest, exc: Refused) -> HttpResponse:
    response = error_response(STATUS.get(exc.code, 400), exc.code, exc.detail)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(ValidationError)
def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    """ninja's 422: a 400 like every other input the API refuses."""
    problems = []
    for error in exc.errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return error_response(400, "bad_request", "; ".join(problems) or "Invalid input.")


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 401:
        detail = "Log in, or send a personal token as 'Authorization: Bearer <token>'."
        return error_response(401, "unauthorized", detail)
    if exc.status_code == 400:
        return error_response(400, "bad_request", "The body is not valid JSON.")
    return error_response(exc.status_code, "error", str(exc))


@api.exception_handler(CsrfFailed)
def csrf_failed(request: HttpRequest, exc: CsrfFailed) -> HttpResponse:
    return exc.response


@api.exception_handler(RequestDataTooBig)
def too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return error_response(413, "too_long", f"A request body may hold at most {limit} bytes.")


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(404, "not_found", "Not found.")


@api.exception_handler(Exception)
def crashed(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.error("API request %s %s failed", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "Something broke on our side.")


def answers(ok: dict[int, Any], *errors: int) -> dict[int, Any]:
    """A route's responses: its own, the errors every route may answer, and `errors`."""
    return {**ok, **dict.fromkeys((400, 401, *errors), ErrorOut)}


def user_id(request: HttpRequest) -> int:
    pk: int = request.auth.pk  # type: ignore[attr-defined]  # set by chat.api_auth
    return pk


# --- Cursor pagination ----------------------------------------------------------------------
# The cursor is the last row's (updated_at, id), in base64 so that clients do not build one.


def encode_cursor(conversation: Conversation) -> str:
    position = json.dumps([conversation.updated_at.isoformat(), str(conversation.id)])
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    invalid = Refused("bad_request", "'cursor' is not one this API gave out.")
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if not (isinstance(position, list) and len(position) == 2):
        raise invalid
    if not all(isinstance(part, str) for part in position):
        raise invalid
    try:
        updated_at, pk = datetime.fromisoformat(position[0]), UUID(position[1])
    except ValueError:
        raise invalid from None
    # A naive timestamp would be compared in the wrong zone (and warns); ours are never naive.
    if updated_at.tzinfo is None:
        raise invalid
    return updated_at, pk


class ListFilters(Schema):
    limit: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(default=None, description="`next` of the page before.")
    q: str = Field(default="", description="Searches titles and message text.")


# --- Conversations --------------------------------------------------------------------------


@api.get("/conversations/", response=answers({200: ConversationPage}))
async def list_conversations(request: HttpRequest, filters: Query[ListFilters]) -> Any:
    """The user's conversations, newest first; `next` goes back as `cursor`, with the same
    `q` and `limit`."""
    after = decode_cursor(filters.cursor) if filters.cursor else None
    # One row past the page says whether there is a next page, without a COUNT.
    rows = await service().conversations(
        user_id(request), after=after, text=filters.q, limit=filters.limit + 1
    )
    page = rows[: filters.limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > filters.limit else None
    return {"results": [conversation_json(c) for c in page], "next": next_cursor}


NO_FIELDS = ConversationIn()  # an empty body: the defaults


@api.post("/conversations/", response=answers({201: ConversationOut}, 403, 413))
async def create_conversation(
    request: HttpRequest, conversation: ConversationIn = NO_FIELDS
) -> Any:
    """Start a conversation; every field may be left out, and so may the body."""
    created = await service().create(user_id(request), **conversation.model_dump())
    return Status(201, conversation_json(created))


@api.get("/conversations/{uuid:conversation_id}/", response=answers({200: TranscriptOut}, 404))
async def get_conversation(request: HttpRequest, conversation_id: UUID) -> Any:
    """The conversation with all its messages, oldest first."""
    state = await service().transcript(user_id(request), conversation_id)
    messages = [message_json(m) for m in state.messages]
    return {**conversation_json(state.conversation), "messages": messages}


@api.patch(
    "/conversations/{uuid:conversation_id}/",
    response=answers({200: ConversationOut}, 403, 404, 413),
)
async def change_conversation(
    request: HttpRequest, conversation_id: UUID, change: ConversationChange
) -> Any:
    """Change the title, model or system prompt; open tabs are told."""
    fields = change.model_dump(exclude_unset=True)
    changed = await service().update(user_id(request), conversation_id, **fields)
    return conversation_json(changed)


@api.delete("/conversations/{uuid:conversation_id}/", response=answers({204: None}, 403, 404))
async def delete_conversation(request: HttpRequest, conversation_id: UUID) -> Any:
    """Delete the conversation, stopping its reply first."""
    await service().delete(user_id(request), conversation_id)
    return Status(204, None)


@api.get("/models/", response=answers({200: ModelsOut}))
async def list_models(request: HttpRequest) -> Any:
    """The models a conversation may use; `default` is the one it gets unless it names one."""
    return {"models": list(settings.CHAT_MODELS), "default": default_model()}


# --- Replies --------------------------------------------------------------------------------

EVENT_STREAM = {"content": {sse.CONTENT_TYPE: {"schema": sse.EVENT_SCHEMA}}}


@api.post(
    "/conversations/{uuid:conversation_id}/messages/",
    response=answers({200: SentOut, 201: SentOut}, 403, 404, 409, 413, 429),
    openapi_extra={"responses": {200: EVENT_STREAM}},
)
async def send_message(request: HttpRequest, conversation_id: UUID, message: MessageIn) -> Any:
    """Post a user message and answer it. With `Accept: text/event-stream` the reply
    streams as server-sent events (200); otherwise the view waits for the whole reply
    (201). A retried `client_msg_id` posts nothing: 200 with no reply, or the stream of
    the reply that runs."""
    uid = user_id(request)

    def start() -> Awaitable[Started]:
        return service().send(uid, conversation_id, message.content, message.client_msg_id)

    return await answer_reply(request, conversation_id, start)


@api.post(
    "/conversations/{uuid:conversation_id}/regenerate/",
    response=answers({201: SentOut}, 403, 404, 409, 429),
    openapi_extra={"responses": {200: {"description": "The reply's events", **EVENT_STREAM}}},
)
async def regenerate(request: HttpRequest, conversation_id: UUID) -> Any:
    """Replace the last reply with a new one; answered like messages/."""
    uid = user_id(request)
    return await answer_reply(
        request, conversation_id, lambda: service().regenerate(uid, conversation_id)
    )


@api.post(
    "/conversations/{uuid:conversation_id}/continue/",
    response=answers({201: SentOut}, 403, 404, 409, 429),
    openapi_extra={"responses": {200: {"description": "The reply's events", **EVENT_STREAM}}},
)
async def continue_reply(request: HttpRequest, conversation_id: UUID) -> Any:
    """Go on with the last reply where it was cut (`interrupted`: its server stopped or
    died), in the same message after its text, usage added up; answered like messages/."""
    uid = user_id(request)
    return await answer_reply(
        request, conversation_id, lambda: service().continue_reply(uid, conversation_id)
    )


async def answer_reply(
    request: HttpRequest, conversation_id: UUID, start: Callable[[], Awaitable[Started]]
) -> Any:
    if not sse.wants_events(request.headers.get("Accept", "")):
        started = await start()
        assistant = await service().finished(started)
        body = {
            "user_message": _json_or_none(started.user_message),
            "assistant_message": _json_or_none(assistant),
        }
        return Status(201 if started.reply is not None else 200, body)
    # Served by chat.sse_routes when the app runs behind chatsite.asgi; this path answers
    # the same to any other caller (Django's test client, another ASGI set-up).
    stream = await sse.reply_stream(user_id(request), conversation_id, session_key(request), start)
    return sse.event_stream(stream)


def _json_or_none(message: Message | None) -> dict[str, Any] | None:
    return message_json(message) if message is not None else None


@api.get(
    "/conversations/{uuid:conversation_id}/events/",
    response=answers({200: None}, 404),
    openapi_extra={"responses": {200: {"description": "The reply's events", **EVENT_STREAM}}},
)
async def follow_events(
    request: HttpRequest,
    conversation_id: UUID,
    after: QueryEx[int | None, P(ge=0, description="The `id` of the last event seen.")] = None,
    last_event_id: HeaderEx[int | None, P(alias="Last-Event-ID", ge=0)] = None,
) -> Any:
    """Reattach to the running reply: its deltas after `Last-Event-ID` (or `after`), or a
    `state` event when neither is given, then its events up to `done`. With no reply
    running, one `state` event."""
    seen = last_event_id if last_event_id is not None else after
    return await follow_reply(request, conversation_id, seen)


async def follow_reply(
    request: HttpRequest, conversation_id: UUID, after: int | None
) -> StreamingHttpResponse:
    caller_session = session_key(request)
    stream = await sse.follow_stream(user_id(request), conversation_id, after, caller_session)
    return sse.event_stream(stream)


@api.post("/conversations/{uuid:conversation_id}/stop/", response=answers({202: None}, 403, 404))
async def stop(request: HttpRequest, conversation_id: UUID) -> Any:
    """Stop the running reply, if any; it ends `stopped`, with the text it had."""
    await service().stop(user_id(request), conversation_id)
    return Status(202, None)


# --- Export ---------------------------------------------------------------------------------


@api.get(
    "/conversations/{uuid:conversation_id}/export/",
    response=answers({200: TranscriptFile}, 404),
    openapi_extra={
        "responses": {200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}}
    },
)
async def export(
    request: HttpRequest, conversation_id: UUID, format: Literal["md", "json"] = "md"
) -> HttpResponse:
    """The whole transcript as a file to download: Markdown or JSON."""
    state = await service().transcript(user_id(request), conversation_id)
    return exports.export_response(state, format)
