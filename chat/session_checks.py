"""Which sessions still log their user in, for many sessions in one step.

An open socket checked its session once, when it opened. A session can end without a
logout: it expires, an administrator deletes it, the user changes their password or is
deactivated. The chat service asks this module, every CHAT_SESSION_CHECK_SECONDS, about
the sessions of all its open sockets, and closes those whose session no longer holds.

The checks are Django's own (`django.contrib.auth.get_user`): the session exists and has
not expired, names a configured backend and a user that backend lets in, and carries the
hash of that user's current password. Sessions stored in the database are read from it,
never from the cache (a session deleted there by hand is gone), with one query for all of
them, and their users with another.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.contrib.sessions.models import Session
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from chat.persistence import db_step, user_of_session
from chat.tokens import live_token_keys, token_ids

# Session keys per query: well under every database's limit on parameters.
CHUNK = 500


@db_step
def logged_in(session_keys: Iterable[str]) -> set[str]:
    """Those of `session_keys` whose session still logs its user in."""
    keys = list(session_keys)
    tokens = token_ids(keys)
    alive = live_token_keys(tokens) if tokens else set()
    keys = [key for key in keys if key not in tokens]
    return alive | _logged_in_sessions(keys)


def _logged_in_sessions(keys: list[str]) -> set[str]:
    engine = import_module(settings.SESSION_ENGINE)
    if not issubclass(engine.SessionStore, DatabaseSessionStore):
        # Another engine (cache only, signed cookies): each session on its own.
        return {key for key in keys if user_of_session(key) is not None}
    sessions = _stored_sessions(keys)
    users = _users(sessions.values())
    return {key for key, data in sessions.items() if _logs_in(data, users)}


def _stored_sessions(keys: list[str]) -> dict[str, dict[str, Any]]:
    decoder = DatabaseSessionStore()
    found: dict[str, dict[str, Any]] = {}
    now = timezone.now()
    for start in range(0, len(keys), CHUNK):
        rows = Session.objects.filter(
            session_key__in=keys[start : start + CHUNK], expire_date__gt=now
        ).values_list("session_key", "session_data")
        for key, data in rows:
            found[key] = decoder.decode(data)
    return found


def _users(sessions: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """The users the sessions name, by (backend path, user id as the session holds it)."""
    wanted: dict[str, set[str]] = {}
    for data in sessions:
        backend_path, user_id = str(data.get(BACKEND_SESSION_KEY)), data.get(SESSION_KEY)
        if backend_path in settings.AUTHENTICATION_BACKENDS and user_id is not None:
            wanted.setdefault(backend_path, set()).add(str(user_id))
    users: dict[tuple[str, str], Any] = {}
    model = auth.get_user_model()
    for backend_path, ids in wanted.items():
        backend = auth.load_backend(backend_path)
        can_authenticate = getattr(backend, "user_can_authenticate", lambda user: True)
        pks = [model._meta.pk.to_python(user_id) for user_id in ids]
        for user in model._default_manager.filter(pk__in=pks):
            if can_authenticate(user):
                users[(backend_path, str(user.pk))] = user
    return users


def _logs_in(data: dict[str, Any], users: dict[tuple[str, str], Any]) -> bool:
    user = users.get((str(data.get(BACKEND_SESSION_KEY)), str(data.get(SESSION_KEY))))
    if user is None:
        return False
    session_hash = data.get(HASH_SESSION_KEY)
    if not session_hash:
        return False
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    return any(constant_time_compare(session_hash, known) for known in hashes)
