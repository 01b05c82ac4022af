"""The benchmark's steps inside the project's database, run as a subprocess with the
server's environment, so that the benchmark itself never imports Django.

    python -m bench.database sessions 200   # users, each logged in: JSON of session keys
    python -m bench.database replies        # JSON of every stored reply, by conversation

It also sets up the scripts that measure one database step in-process (`bench.send_cost`,
`bench.setup_cost`) on a fresh database of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import TYPE_CHECKING

import django

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def create_sessions(count: int) -> dict[str, object]:
    """`count` users, each with a logged-in session, as `force_login` would make them."""
    from django.conf import settings
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.db import transaction

    names = [f"bench-{i}" for i in range(count)]
    with transaction.atomic():
        # No usable password: hashing hundreds of real ones would take minutes.
        User.objects.bulk_create([User(username=n, password=make_password(None)) for n in names])
        users = {u.username: u for u in User.objects.filter(username__in=names)}
        keys = [logged_in_session(users[name]) for name in names]
    return {"cookie_name": settings.SESSION_COOKIE_NAME, "sessions": keys}


def logged_in_session(user: User) -> str:
    """A new session of `user`, logged in as `force_login` would, stored in the database
    only (another process's session cache never sees it): its key."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session.session_key or ""


def fresh_project(prefix: str, **environment: str) -> User:
    """Set Django up in this process on a new, migrated SQLite database in a temporary
    folder, with `environment` on top; its one user, `bench`."""
    folder = tempfile.mkdtemp(prefix=prefix)
    os.environ.update(
        DATABASE_URL=f"sqlite:///{folder}/db.sqlite3",
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_SECRET_KEY="bench-only",  # noqa: S106
        **environment,
    )
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return User.objects.create_user("bench")


def stored_replies() -> dict[str, dict[str, str]]:
    """The last assistant message of every conversation: its status and text."""
    from chat.models import Message

    replies: dict[str, dict[str, str]] = {}
    assistant = Message.objects.filter(role=Message.Role.ASSISTANT).order_by("created_at")
    for conversation_id, status, content in assistant.values_list(
        "conversation_id", "status", "content"
    ):
        replies[str(conversation_id)] = {"status": status, "content": content}
    return replies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("sessions").add_argument("count", type=int)
    steps.add_parser("replies")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    django.setup()
    result = create_sessions(args.count) if args.step == "sessions" else stored_replies()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
