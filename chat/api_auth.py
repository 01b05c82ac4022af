"""Who is asking the JSON API: a personal token, or else the browser's session.

`Authorization: Bearer chat_...` is tried first; a request that names a token answers
for it alone, so a bad token is a 401 even with a session cookie beside it, and only the
token skips the CSRF check. A session is checked for CSRF on unsafe methods, as Django's
middleware would (django-ninja exempts its views from the middleware and leaves the
check to cookie auth). Both look the user up on the event loop's terms: the async ORM
for the token, batched `auth.get_user` calls for sessions; never `request.user`, whose
lazy lookup is synchronous.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse
from ninja.errors import AuthenticationError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from chat.batching import Batcher
from chat.tokens import credential_key, live_token

if TYPE_CHECKING:
    # The project keeps Django's user model (no AUTH_USER_MODEL); typing only.
    from django.contrib.auth.models import User

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CsrfFailed(Exception):
    """A session request without a valid CSRF token: `response` is CSRF_FAILURE_VIEW's."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__("CSRF check failed")
        self.response = response


def session_key(request: HttpRequest) -> str | None:
    """What the request was let in by, as the chat service keys what ends with it: the
    session, or the token (`chat.tokens.credential_key`)."""
    scheme = request.headers.get("Authorization", "").split(" ", 1)[0]
    if scheme.lower() == "bearer":
        return getattr(request, "token_key", None)
    return request.COOKIES.get(settings.SESSION_COOKIE_NAME)


def cookie_session_key(request: HttpRequest) -> str | None:
    """The session cookie's key, if Django could have issued it: lowercase letters and
    digits. Anything else (a NUL that the database would refuse) is no session, answered
    without a query, as for sockets (`chat.consumers.session_cookie`)."""
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    return key if key and key.isascii() and key.isalnum() else None


class BearerToken(HttpBearer):
    """`Authorization: Bearer <personal token>` (chat.tokens)."""

    async def authenticate(self, request: HttpRequest, token: str) -> User:
        found = await _live_token(f"Bearer {token}")
        if found is None:
            # Named, but not a live token: refused, not passed on to the session.
            raise AuthenticationError()
        request.user = found.owner
        request.token_key = credential_key(found.pk)  # type: ignore[attr-defined]
        return found.owner


class SessionCookie(APIKeyCookie):
    """Django's session cookie, with the CSRF check on unsafe methods."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        # The CSRF check waits for `authenticate`: an anonymous request is a 401 first.
        return cookie_session_key(request)

    async def authenticate(self, request: HttpRequest, key: str | None) -> User | None:
        if key is None:
            return None
        user = await _users.submit(request)
        request.user = user  # `request.user` would look again, synchronously
        if not user.is_authenticated:
            return None
        if request.method in UNSAFE_METHODS:
            refusal = check_csrf(request)
            if refusal is not None:
                raise CsrfFailed(refusal)
        assert not isinstance(user, AnonymousUser)
        return user


def users_of(requests: list[HttpRequest]) -> list[User | AnonymousUser | Exception]:
    """Django's `auth.get_user` for each request: the session's user, if it exists, is
    active, and has not changed their password since. Requests that arrive together are
    looked up in one trip to the ORM thread."""
    users: list[User | AnonymousUser | Exception] = []
    for request in requests:
        try:
            users.append(auth.get_user(request))
        except Exception as exc:  # that request's failure, not the others'
            users.append(exc)
    return users


# Django's request cycle has closed stale database connections (its `request_started`).
_live_token = sync_to_async(live_token)
_users: Batcher[HttpRequest, User | AnonymousUser] = Batcher(sync_to_async(users_of))

# Tried in order; the first that answers with a user lets the request in.
AUTH: list[Any] = [BearerToken(), SessionCookie()]
