"""The benchmark's steps inside the project's database, run as a subprocess with the
server's environment, so that the benchmark itself never imports Django.

    python -m bench.database sessions 200   # users, each logged in: JSON of session keys
    python -m bench.database replies        # JSON of every stored reply, by conversation
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import django


def create_sessions(count: int) -> dict[str, object]:
    """`count` users, each with a logged-in session, as `force_login` would make them."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction

    names = [f"bench-{i}" for i in range(count)]
    with transaction.atomic():
        # No usable password: hashing hundreds of real ones would take minutes.
        User.objects.bulk_create([User(username=n, password=make_password(None)) for n in names])
        users = {u.username: u for u in User.objects.filter(username__in=names)}
        keys = []
        for name in names:
            user = users[name]
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.create()
            keys.append(session.session_key)
    return {"cookie_name": settings.SESSION_COOKIE_NAME, "sessions": keys}


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
