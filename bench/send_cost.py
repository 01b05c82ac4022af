"""CPU per send on the ORM thread: `persistence.post_user_message` called directly, N times,
on a fresh SQLite database. At K chats sending at once these calls queue on the one ORM
thread, so their cost bounds the time to first token (issue 4).

    .venv/bin/python -m bench.send_cost [--n 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="send-cost-")
    os.environ.update(
        DATABASE_URL=f"sqlite:///{folder}/db.sqlite3",
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_SECRET_KEY="bench-only",  # noqa: S106
        CHAT_MESSAGES_PER_MINUTE=str(args.n * 10),
    )
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from chat import persistence
    from chat.models import Conversation

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench")
    conversations = [Conversation.objects.create(owner=user, model="m") for _ in range(args.n)]
    post = persistence.post_user_message.func  # type: ignore[attr-defined]
    statements: list[str] = []

    def count(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        started = time.process_time()
        for conversation in conversations:
            post(user.pk, conversation.id, "hello", uuid.uuid4())
        cpu = time.process_time() - started
    print(
        f"{args.n} sends: {cpu / args.n * 1000:.2f} ms CPU each, "
        f"{len(statements) / args.n:.1f} statements each"
    )


if __name__ == "__main__":
    main()
