"""Where the CPU of a chat's set-up goes, piece by piece, on a fresh SQLite database: each
database step of creating a conversation and opening its socket, called directly N times,
beside one thread hop and the same lookup in raw SQL (issue 4).

    .venv/bin/python -m bench.setup_cost [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench.database import fresh_project, logged_in_session


def cpu_us(n: int, step: Callable[[int], Any]) -> float:
    """CPU per call of `step(i)`, i in range(n), after a few calls to warm up."""
    for i in range(min(n, 20)):
        step(i)
    started = time.process_time()
    for i in range(n):
        step(i)
    return (time.process_time() - started) / n * 1e6


def hop_us(n: int) -> float:
    """CPU per round trip to the ORM thread (asgiref's `sync_to_async`), doing nothing."""
    from asgiref.sync import sync_to_async

    nothing = sync_to_async(lambda: None)

    async def hops() -> float:
        for _ in range(20):
            await nothing()
        started = time.process_time()
        for _ in range(n):
            await nothing()
        return (time.process_time() - started) / n * 1e6

    return asyncio.run(hops())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args(argv)
    user = fresh_project("setup-cost-")
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import connection

    from chat import persistence
    from chat.models import Conversation

    n = args.n
    sessions = [logged_in_session(user) for _ in range(n + 20)]
    made: list[Conversation] = []
    pk = Conversation._meta.pk
    assert pk is not None

    def raw_lookup(i: int) -> None:
        with connection.cursor() as cursor:
            value = pk.get_db_prep_value(made[i].pk, connection)
            cursor.execute("SELECT * FROM chat_conversation WHERE id = %s", [value])
            cursor.fetchall()

    open_conversations = persistence.open_conversations.func  # type: ignore[attr-defined]
    rows = [
        ("a session, from the database", lambda i: SessionStore(sessions[i]).load()),
        ("the user, by id", lambda i: get_user_model().objects.get(pk=user.pk)),
        (
            "a conversation, inserted",
            lambda i: made.append(Conversation.objects.create(owner=user)),
        ),
        (
            "a conversation, by id and owner",
            lambda i: Conversation.objects.filter(pk=made[i].pk, owner_id=user.pk).first(),
        ),
        (
            "... joined to its active owner",
            lambda i: persistence.owned(user.pk).filter(pk=made[i].pk).first(),
        ),
        ("its latest messages", lambda i: list(made[i].messages.order_by("-created_at")[:50])),
        ("the same lookup by id in raw SQL", raw_lookup),
    ]
    print(f"CPU per call, {n} calls each (us):")
    for name, step in rows:
        print(f"  {name:<40} {cpu_us(n, step):7.0f}")

    def socket_opens(i: int) -> None:
        opening = persistence.Opening(sessions[i], made[i].pk)
        [(user_id, state)] = open_conversations([opening])
        assert user_id == user.pk and state is not None

    print(f"  {'a socket opens (open_conversations)':<40} {cpu_us(n, socket_opens):7.0f}")
    print("  (its session read from the database, as with a cold session cache)")
    print(f"  {'one round trip to the ORM thread':<40} {hop_us(n * 10):7.0f}")


if __name__ == "__main__":
    main()
