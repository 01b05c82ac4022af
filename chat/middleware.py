"""Request plumbing: the CSP header, and the HTTP path kept off per-request threads.

Django's `ASGIHandler` gives every request a thread (and so a database connection) of its
own, and `MiddlewareMixin` hops to that thread twice per middleware. For the async views
that is most of a JSON API request's CPU; the classes below avoid it where nothing blocks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.urls import Resolver404, resolve
from django.utils.deprecation import MiddlewareMixin

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class ContentSecurityPolicyMiddleware:
    """Adds the policy unless a view set its own; async-capable so ASGI requests stay async."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if iscoroutinefunction(self.get_response):
            return self._acall(request)
        return self._add_policy(self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        get_response = cast(
            "Callable[[HttpRequest], Awaitable[HttpResponseBase]]", self.get_response
        )
        return self._add_policy(await get_response(request))

    @staticmethod
    def _add_policy(response: HttpResponseBase) -> HttpResponseBase:
        response.headers.setdefault("Content-Security-Policy", POLICY)
        return response


# --- One ORM thread for async views -------------------------------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class SharedOrmThreadASGIHandler(ASGIHandler):
    """Django's handler, without its per-request thread for requests to async views.

    `ASGIHandler` runs each request in its own `ThreadSensitiveContext`: a new thread and,
    on it, a new database connection, for a few short ORM calls. Outside such a context
    asgiref runs thread-sensitive calls on its one process-wide thread, the ORM thread
    the websockets already use, with its open connection. Sync views (login, which hashes
    a password; the admin) keep a thread of their own, so they never hold up the chats.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and routes_to_async_view(scope):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def routes_to_async_view(scope: Scope) -> bool:
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)


Step = Callable[..., Any]


# --- Middleware steps run on the event loop -------------------------------------------------


class NonBlockingStepsMixin(MiddlewareMixin):
    """Runs `process_request` and `process_response` on the event loop, not each in a
    thread hop as `MiddlewareMixin` does in async mode: only for steps that read the
    request and set headers or cookies, with no database, cache or file access. A step
    that may touch them this time says so, and hops as Django's does."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        process_request: Step | None = getattr(self, "process_request", None)
        process_response: Step | None = getattr(self, "process_response", None)
        response = None
        if process_request is not None:
            if self.request_step_may_block(request):
                response = await sync_to_async(process_request, thread_sensitive=True)(request)
            else:
                response = process_request(request)
        response = response or await self.get_response(request)  # type: ignore[misc]
        if process_response is not None:
            if self.response_step_may_block(request):
                step = sync_to_async(process_response, thread_sensitive=True)
                response = await step(request, response)
            else:
                response = process_response(request, response)
        return cast("HttpResponseBase", response)

    def request_step_may_block(self, request: HttpRequest) -> bool:
        return False

    def response_step_may_block(self, request: HttpRequest) -> bool:
        return False


class SecurityMiddleware(NonBlockingStepsMixin, security.SecurityMiddleware):
    """Django's, with its header steps on the event loop."""


class CommonMiddleware(NonBlockingStepsMixin, common.CommonMiddleware):
    """Django's, with its host, user-agent and slash checks on the event loop."""


class AuthenticationMiddleware(NonBlockingStepsMixin, auth.AuthenticationMiddleware):
    """Django's: it only sets the lazy `request.user` and `request.auser`, on the event loop."""


class XFrameOptionsMiddleware(NonBlockingStepsMixin, clickjacking.XFrameOptionsMiddleware):
    """Django's, with its header step on the event loop."""


class CsrfViewMiddleware(NonBlockingStepsMixin, csrf.CsrfViewMiddleware):
    """Django's; its cookie steps on the event loop (with `CSRF_USE_SESSIONS` they would
    read and write the session, so then they keep their thread hops)."""

    def request_step_may_block(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def response_step_may_block(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)


class SessionMiddleware(NonBlockingStepsMixin, sessions.SessionMiddleware):
    """Django's. Its request step only makes a lazy session store; its response step
    writes only a session that changed (or every session, with
    `SESSION_SAVE_EVERY_REQUEST`), and only then takes a thread hop."""

    def response_step_may_block(self, request: HttpRequest) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(NonBlockingStepsMixin, messages.MessageMiddleware):
    """Django's. Its request step only makes a lazy store; its response step stores
    messages (in a cookie, or in the session when they overflow it) only when some were
    read or added, and only then takes a thread hop."""

    def response_step_may_block(self, request: HttpRequest) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)
