"""The JSON API: async views over the logged-in user's own conversations.

Each route is one view that dispatches by method to a handler called as
``handler(request, user, **url_kwargs)`` once the user is known to be logged in. Handlers
raise ``ApiError`` for anything the client got wrong; the view turns it into the JSON
error shape of DESIGN.md section 4.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import csrf

from chat import chats
from chat.batching import Batcher
from chat.models import Conversation, Message
from chat.refusals import Refused
from chat.serializers import conversation_json, message_json

if TYPE_CHECKING:
    # The project keeps Django's user model (no AUTH_USER_MODEL); typing only.
    from django.contrib.auth.models import User

PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_TITLE_LENGTH = 200  # Conversation.title's max_length
WRITABLE_FIELDS = frozenset({"title", "model", "system_prompt"})

Handler = Callable[..., Coroutine[Any, Any, HttpResponse]]
View = Callable[..., Coroutine[Any, Any, HttpResponse]]


# --- Errors and plumbing -------------------------------------------------------------------


class ApiError(Exception):
    """A request the API refuses, with the status and code the client sees."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    def response(self) -> JsonResponse:
        return error_response(self.status, self.code, self.detail)


def error_response(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "detail": detail}}, status=status)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's CSRF refusal (`CSRF_FAILURE_VIEW`): for the API, in its JSON error shape;
    for the pages, Django's own page."""
    if request.path_info.startswith("/api/"):
        detail = f"CSRF check failed: {reason} Send the csrftoken cookie's value as X-CSRFToken."
        return error_response(403, "csrf_failed", detail)
    return csrf.csrf_failure(request, reason)


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "bad_request", detail)


def not_found() -> ApiError:
    # One message for "missing" and "not yours", so ids of others' conversations leak nothing.
    return ApiError(404, "not_found", "No such conversation.")


def api_view(handlers: Mapping[str, Handler]) -> View:
    """A view that checks the method, then the login, then runs the method's handler."""
    allowed = ", ".join(sorted(handlers))

    async def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        handler = handlers.get(request.method or "")
        if handler is None:
            response = error_response(405, "method_not_allowed", f"Allowed: {allowed}.")
            response["Allow"] = allowed
            return response
        user = await request_user(request)
        if not user.is_authenticated:
            return error_response(401, "unauthorized", "Log in to use the API.")
        try:
            return await handler(request, user, **kwargs)
        except ApiError as error:
            return error.response()

    return view


async def request_user(request: HttpRequest) -> User | AnonymousUser:
    """The logged-in user. Requests that arrive together are looked up in one trip to the
    ORM thread, where `request.auser()` takes one per cache and database read."""
    user = await _users.submit(request)
    request.user = user  # `request.user` would look again, synchronously
    return user


def _users_of(requests: list[HttpRequest]) -> list[User | AnonymousUser | Exception]:
    """Django's `auth.get_user` for each request: the session's user, if it exists, is
    active, and has not changed their password since."""
    users: list[User | AnonymousUser | Exception] = []
    for request in requests:
        try:
            users.append(auth.get_user(request))
        except Exception as exc:  # that request's failure, not the others'
            users.append(exc)
    return users


_users: Batcher[HttpRequest, User | AnonymousUser] = Batcher(sync_to_async(_users_of))


def read_json_object(request: HttpRequest) -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as ``{}``."""
    # ASGI requests are spooled before the view runs, so reading the body does not block.
    if not request.body:
        return {}
    try:
        data = json.loads(request.body)
    except (ValueError, RecursionError):
        raise bad_request("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise bad_request("The body must be a JSON object.")
    return data


async def owned_conversation(user: User, conversation_id: UUID) -> Conversation:
    try:
        return await Conversation.objects.aget(pk=conversation_id, owner=user)
    except Conversation.DoesNotExist:
        raise not_found() from None


def default_model() -> str:
    model: str = settings.CHAT_MODELS[0]
    return model


# --- Input ---------------------------------------------------------------------------------


def conversation_fields(data: dict[str, Any]) -> dict[str, str]:
    """The writable fields present in ``data``, checked; unknown ones are refused so typos show."""
    unknown = set(data) - WRITABLE_FIELDS
    if unknown:
        raise bad_request(f"Unknown fields: {', '.join(sorted(unknown))}.")
    for name, value in data.items():
        if not isinstance(value, str):
            raise bad_request(f"'{name}' must be a string.")
    fields: dict[str, str] = dict(data)
    if "title" in fields:
        fields["title"] = fields["title"].strip()
        if len(fields["title"]) > MAX_TITLE_LENGTH:
            raise bad_request(f"'title' is longer than {MAX_TITLE_LENGTH} characters.")
    if "model" in fields and fields["model"] not in settings.CHAT_MODELS:
        raise bad_request(f"Unknown model; offered: {', '.join(settings.CHAT_MODELS)}.")
    return fields


def page_size(value: str | None) -> int:
    if value is None:
        return PAGE_SIZE
    try:
        limit = int(value)
    except ValueError:
        raise bad_request("'limit' must be an integer.") from None
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise bad_request(f"'limit' must be between 1 and {MAX_PAGE_SIZE}.")
    return limit


# --- Cursor pagination ---------------------------------------------------------------------
# The cursor is the last row's (updated_at, id): unlike an offset it stays correct while
# conversations are created and bumped between pages. Base64 keeps clients from building one.


def encode_cursor(conversation: Conversation) -> str:
    position = json.dumps([conversation.updated_at.isoformat(), str(conversation.id)])
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    invalid = bad_request("'cursor' is not one this API gave out.")
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


def after_cursor(
    conversations: QuerySet[Conversation], position: tuple[datetime, UUID]
) -> QuerySet[Conversation]:
    updated_at, pk = position
    return conversations.filter(Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, pk__lt=pk))


def matching(conversations: QuerySet[Conversation], text: str) -> QuerySet[Conversation]:
    # EXISTS rather than a join on messages: one row per conversation, no DISTINCT needed.
    mentions = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=text)
    return conversations.filter(Q(title__icontains=text) | Exists(mentions))


# --- Handlers ------------------------------------------------------------------------------


async def list_conversations(request: HttpRequest, user: User) -> HttpResponse:
    """Newest first; ``next`` goes back as ``?cursor=`` with the same ``q`` and ``limit``."""
    limit = page_size(request.GET.get("limit"))
    conversations = Conversation.objects.filter(owner=user).order_by("-updated_at", "-pk")
    if cursor := request.GET.get("cursor"):
        conversations = after_cursor(conversations, decode_cursor(cursor))
    if text := request.GET.get("q", "").strip():
        conversations = matching(conversations, text)
    # One row past the page says whether there is a next page, without a COUNT.
    rows = [conversation async for conversation in conversations[: limit + 1]]
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    return JsonResponse({"results": [conversation_json(c) for c in page], "next": next_cursor})


async def create_conversation(request: HttpRequest, user: User) -> HttpResponse:
    fields = conversation_fields(read_json_object(request))
    try:
        conversation = await chats.service().create(user.pk, **fields)
    except Refused as refused:
        raise ApiError(400, refused.code, refused.detail) from None
    return JsonResponse(conversation_json(conversation), status=201)


async def conversation_detail(
    request: HttpRequest, user: User, conversation_id: UUID
) -> HttpResponse:
    conversation = await owned_conversation(user, conversation_id)
    messages = [message_json(m) async for m in conversation.messages.order_by("created_at")]
    return JsonResponse({**conversation_json(conversation), "messages": messages})


async def list_models(request: HttpRequest, user: User) -> HttpResponse:
    return JsonResponse({"models": list(settings.CHAT_MODELS), "default": default_model()})


# --- Views (routed in chat/api_urls.py) ----------------------------------------------------

conversations_view = api_view({"GET": list_conversations, "POST": create_conversation})
conversation_view = api_view({"GET": conversation_detail})
models_view = api_view({"GET": list_models})
