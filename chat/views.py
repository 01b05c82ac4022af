"""The HTML pages: the list of a user's conversations, one conversation, a draft; the icon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.http import require_GET

from chat.chats import default_model, service
from chat.refusals import Refused

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# How many conversations the index lists; the JSON API pages through the rest.
INDEX_LIMIT = 200


@require_GET
@login_required
async def index(request: HttpRequest) -> HttpResponse:
    """The user's conversations, newest first, and a link to start one."""
    user = await logged_in_user(request)
    conversations = await service().conversations(user.pk, limit=INDEX_LIMIT)
    # `user` is passed explicitly: the auth context processor's lazy `request.user`
    # would query the database synchronously inside this async view.
    context = {"user": user, "conversations": conversations}
    return render(request, "chat/index.html", context)


@require_GET
@login_required
async def new(request: HttpRequest) -> HttpResponse:
    """A draft: the conversation page with nothing stored. Its first send creates the
    conversation (through the JSON API), so an unused "New chat" leaves nothing behind."""
    user = await logged_in_user(request)
    context: dict[str, Any] = {
        "user": user,
        "conversation": None,
        "model": default_model(),
        "system_prompt": "",
        "transcript": [],
        "local_model": settings.CHAT_LOCAL_MODEL,
        "max_input_chars": settings.CHAT_MAX_INPUT_CHARS,
    }
    return render(request, "chat/conversation.html", context)


@require_GET
@login_required
async def conversation(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    """One conversation: the transcript so far (the websocket's `state` then takes over)."""
    user = await logged_in_user(request)
    try:
        # The same window of recent messages the websocket's `state` frame sends.
        found = await service().transcript(
            user.pk, conversation_id, latest=settings.CHAT_STATE_MESSAGES
        )
    except Refused:
        # Someone else's conversation is as missing as a deleted one.
        raise Http404("No such conversation.") from None
    context = {
        "user": user,
        "conversation": found.conversation,
        "model": found.conversation.model,
        "system_prompt": found.conversation.system_prompt,
        "transcript": found.messages,
        # The bundled offline model: say so, so nobody mistakes it for a hosted one.
        "local_model": settings.CHAT_LOCAL_MODEL,
        "max_input_chars": settings.CHAT_MAX_INPUT_CHARS,
    }
    return render(request, "chat/conversation.html", context)


@require_GET
async def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on pages that name no icon: the site's icon."""
    return redirect(static("chat/favicon.svg"))


async def logged_in_user(request: HttpRequest) -> User:
    """The user that `login_required` let through."""
    user = await request.auser()
    assert user.is_authenticated  # for the type checker: the decorator redirected the rest
    return user
