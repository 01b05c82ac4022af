"""The API's event streams, served straight from ASGI in front of Django.

A reply streamed over SSE through Django's request cycle cost about 3 ms of CPU more than
over a websocket (README, "Over SSE"): the sync hooks of Django's middleware (18 trips to
the ORM thread where a websocket's send takes 3) and django-ninja's parsing, on every
reply. The three streaming routes are where a client asks for a reply, so they are
answered here, by an ASGI application in front of Django's:

- `POST /api/conversations/<id>/messages/`, `.../regenerate/` and `.../continue/` with
  `Accept: text/event-stream`;
- `GET /api/conversations/<id>/events/`.

Only a request that Django would let through is answered here: an allowed host, a live
token or a session with its CSRF token, a JSON body the route's schema accepts. Anything
else (no login, a bad body, a disallowed host, a body over Django's limit) goes on to
Django with its body replayed, so that every such refusal is Django's and django-ninja's
own; a refusal of the chat service (`busy`, `not_found`, ...) is answered in the API's
JSON shape by the API's own handler, and the events are `chat.sse`'s, as over Django.
The views in `chat.api` still stream for any caller that does not come through here
(Django's test client, another ASGI set-up); tests/test_sse_routes.py holds both paths to
the same answers.

Not channels' `AsyncHttpConsumer`: its `dispatch` makes a trip to the ORM thread for
every ASGI message, the very cost these routes are here to save.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import import_module
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse
from ninja.utils import check_csrf
from pydantic import ValidationError

from chat import sse
from chat.api import error_response, refused
from chat.api_auth import UNSAFE_METHODS, cookie_session_key, session_key, users_of
from chat.api_schemas import MessageIn
from chat.batching import Batcher
from chat.chats import Started, service
from chat.persistence import db_step
from chat.refusals import Refused
from chat.tokens import credential_key, live_token

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UUID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ROUTE = re.compile(rf"^/api/conversations/(?P<id>{UUID_PATTERN})/(?P<action>[a-z]+)/$")
# (method, last part of the path) -> whether only `Accept: text/event-stream` comes here.
ROUTES = {
    ("POST", "messages"): True,
    ("POST", "regenerate"): True,
    ("POST", "continue"): True,
    ("GET", "events"): False,
}

# What Django's middleware adds to every answer (SecurityMiddleware, XFrameOptionsMiddleware,
# SessionMiddleware for a request that read its session); an event stream needs no more.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": settings.SECURE_REFERRER_POLICY or "",
    "Cross-Origin-Opener-Policy": settings.SECURE_CROSS_ORIGIN_OPENER_POLICY or "",
    "X-Frame-Options": settings.X_FRAME_OPTIONS,
}


# Who asks, looked up as `chat.api_auth` does, closing stale database connections as each
# step of the chat service does: no `request_started` has done it for these requests.
_live_token = db_step(live_token)
_session_users: Batcher[HttpRequest, Any] = Batcher(db_step(users_of))


class ForDjango(Exception):
    """The request is not one answered here: Django answers it (it refuses it)."""


class EventStreamRoutes:
    """Answers the streaming routes; hands every other request to `app` (Django's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        action = _streaming_action(scope)
        if action is None:
            await self.app(scope, receive, send)
            return
        body, replay = await _read_body(receive)
        try:
            if body is None:
                raise ForDjango
            await _answer(scope, action, body, receive, send)
        except ForDjango:
            await self.app(scope, replay, send)


def _streaming_action(scope: Scope) -> tuple[str, UUID] | None:
    """(what is asked, the conversation) of a request for a stream; None for the rest."""
    if scope["type"] != "http":
        return None
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    found = ROUTE.match(path)
    if found is None:
        return None
    only_if_asked = ROUTES.get((scope["method"], found["action"]))
    if only_if_asked is None:
        return None
    if only_if_asked and not sse.wants_events(_header(scope, b"accept")):
        return None
    return found["action"], UUID(found["id"])


async def _answer(
    scope: Scope, action: tuple[str, UUID], body: bytes, receive: Receive, send: Send
) -> None:
    """Answer the request; ForDjango (before anything is sent) for Django to answer it."""
    request = ASGIRequest(scope, io.BytesIO(body))
    try:
        request.get_host()  # ALLOWED_HOSTS, as Django's CommonMiddleware checks it
    except DisallowedHost:
        raise ForDjango from None
    let_in = await _user_id(request)
    if isinstance(let_in, HttpResponse):
        await _send_response(let_in, send)
        return
    name, conversation_id = action
    caller_session = session_key(request)
    try:
        if name == "events":
            after = _after(request)
            stream = await sse.follow_stream(let_in, conversation_id, after, caller_session)
        else:
            start = _starter(name, let_in, conversation_id, request, body)
            stream = await sse.reply_stream(let_in, conversation_id, caller_session, start)
    except Refused as exc:
        await _send_response(refused(request, exc), send)
        return
    except ForDjango:
        raise
    except Exception as exc:
        logger.error("API request %s %s failed", request.method, request.path, exc_info=exc)
        await _send_response(
            error_response(500, "internal_error", "Something broke on our side."), send
        )
        return
    await _send_events(stream, caller_session is not None, receive, send)


async def _user_id(request: HttpRequest) -> int | HttpResponse:
    """Who asks, as `chat.api_auth` lets them in: a token, or else a session with its CSRF
    token on unsafe methods (a failed check answers with Django's CSRF failure view)."""
    authorization = request.headers.get("Authorization", "")
    if authorization.split(" ", 1)[0].lower() == "bearer":
        token = await _live_token(authorization)
        if token is None:
            raise ForDjango
        request.token_key = credential_key(token.pk)  # type: ignore[attr-defined]
        return int(token.owner_id)
    key = cookie_session_key(request)
    if key is None:
        raise ForDjango
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    user = await _session_users.submit(request)
    if not user.is_authenticated:
        raise ForDjango
    if request.method in UNSAFE_METHODS:
        refusal = check_csrf(request)
        if refusal is not None:
            return refusal
    return int(user.pk)


def _starter(
    action: str, user_id: int, conversation_id: UUID, request: HttpRequest, body: bytes
) -> Callable[[], Awaitable[Started]]:
    """What starts the reply the request asks for."""
    if action == "regenerate":
        return lambda: service().regenerate(user_id, conversation_id)
    if action == "continue":
        return lambda: service().continue_reply(user_id, conversation_id)
    if request.content_type != "application/json":
        raise ForDjango
    try:
        message = MessageIn.model_validate_json(body)
    except ValidationError:
        raise ForDjango from None
    return lambda: service().send(user_id, conversation_id, message.content, message.client_msg_id)


def _after(request: HttpRequest) -> int | None:
    """The last delta the client has seen (`Last-Event-ID`, else `?after=`)."""
    seen = request.headers.get("Last-Event-ID")
    if seen is None:
        seen = request.GET.get("after")
    if seen is None:
        return None
    if not (seen.isascii() and seen.isdigit()):
        raise ForDjango
    return int(seen)


async def _send_events(stream: sse.Stream, by_session: bool, receive: Receive, send: Send) -> None:
    headers = {**SECURITY_HEADERS, **sse.HEADERS}
    if by_session:
        headers["Vary"] = "Cookie"  # as Django's SessionMiddleware says of what read one
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items() if v],
        }
    )
    # The client may go away at any time: then the stream ends and detaches (the reply
    # goes on and is saved).
    listening = asyncio.ensure_future(_client_leaves(receive, stream.queue))
    try:
        async for chunk in sse.events(stream):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        listening.cancel()


async def _client_leaves(receive: Receive, queue: sse.EventQueue) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    queue.client_left()


async def _send_response(response: HttpResponse, send: Send) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.items()]
    headers.extend(
        (b"Set-Cookie", cookie.output(header="").strip().encode("latin-1"))
        for cookie in response.cookies.values()
    )
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The request's body, and a `receive` that gives it again from the start. The body
    is None when it is over Django's limit (DATA_UPLOAD_MAX_MEMORY_SIZE): Django refuses it."""
    chunks: list[Message] = []
    size = 0
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    while True:
        message = await receive()
        chunks.append(message)
        if message["type"] != "http.request":
            break  # the client left: Django's request cycle sees it too
        size += len(message.get("body", b""))
        if not message.get("more_body", False) or (limit is not None and size > limit):
            break
    replayed = iter(chunks)

    async def replay() -> Message:
        return next(replayed, None) or await receive()

    complete = chunks[-1]["type"] == "http.request" and not chunks[-1].get("more_body", False)
    body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")
    if not complete or (limit is not None and len(body) > limit):
        return None, replay
    return body, replay


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""
