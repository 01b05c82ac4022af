"""CPU per send on the ORM thread: `persistence.post_user_messages` called directly on a
fresh SQLite database, for N sends in batches of B. At K chats sending at once the sends
queue on the one ORM thread, so their cost bounds the time to first token (issue 4); sends
that arrive together are stored in one batch (`chat.batching`).

    .venv/bin/python -m bench.send_cost [--n 200] [--batch 1]
"""

from __future__ import annotations

import argparse
import time
import uuid

from bench.database import fresh_project


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="sends per database step")
    args = parser.parse_args(argv)
    # One user sends them all: no limit of theirs may refuse one.
    user = fresh_project(
        "send-cost-",
        CHAT_MESSAGES_PER_MINUTE=str(args.n * 10),
        CHAT_REPLIES_RUNNING_PER_USER=str(args.n * 10),
    )
    from django.db import connection

    from chat import persistence
    from chat.models import Conversation

    conversations = [Conversation.objects.create(owner=user, model="m") for _ in range(args.n)]
    post = persistence.post_user_messages.func  # type: ignore[attr-defined]
    statements: list[str] = []

    def count(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        started = time.process_time()
        for start in range(0, args.n, args.batch):
            batch = conversations[start : start + args.batch]
            sends = [persistence.Send(user.pk, c.id, "hello", uuid.uuid4()) for c in batch]
            results = post(sends)
            assert all(isinstance(r, persistence.ReplyPlan) for r in results), results
        cpu = time.process_time() - started
    print(
        f"{args.n} sends in batches of {args.batch}: {cpu / args.n * 1000:.2f} ms CPU each, "
        f"{len(statements) / args.n:.1f} statements each"
    )


if __name__ == "__main__":
    main()
