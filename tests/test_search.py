"""Searching conversations (`chat.search.matching`): what matches, on every backend; on
PostgreSQL, the trigram indexes exist and the search's SQL can use them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from chat.models import Conversation, Message
from chat.search import matching

ROOT = Path(__file__).resolve().parent.parent
SEARCH_INDEXES = {
    "message_content_trgm": "chat_message",
    "conversation_title_trgm": "chat_conversation",
}

postgres_only = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="trigram indexes are PostgreSQL's",
)


def say(conversation: Conversation, *contents: str) -> None:
    for content in contents:
        Message.objects.create(conversation=conversation, role="user", content=content)


def search(owner, text: str) -> list[Conversation]:
    mine = Conversation.objects.filter(owner=owner).order_by("-updated_at", "-pk")
    return list(matching(mine, text))


@pytest.fixture
def conversations(user, other_user, make_conversation):
    """Two of mine and one of someone else's, which mentions everything searched for."""
    now = timezone.now()
    soup = make_conversation(user, title="Leek SOUP", updated_at=now - timedelta(hours=2))
    say(soup, "Which leeks?", "Young ones, sliced thin.")
    trip = make_conversation(user, title="Lisbon", updated_at=now - timedelta(hours=1))
    say(trip, "Where should I eat?", "Try the soup at the market, and pastéis de nata.")
    say(trip, "50% off_tickets?")
    theirs = make_conversation(other_user, title="Soup and Lisbon and leeks")
    say(theirs, "soup, leeks, lisbon, market, 50% off_tickets")
    return {"soup": soup, "trip": trip, "theirs": theirs}


# --- What matches ------------------------------------------------------------------------


@pytest.mark.django_db
def test_matching_title(user, conversations):
    assert search(user, "lisbon") == [conversations["trip"]]


@pytest.mark.django_db
def test_matching_message_text(user, conversations):
    assert search(user, "market") == [conversations["trip"]]


@pytest.mark.django_db
def test_matching_ignores_case_in_title_and_text(user, conversations):
    assert search(user, "soup") == [conversations["trip"], conversations["soup"]]
    assert search(user, "YOUNG ONES") == [conversations["soup"]]


@pytest.mark.django_db
def test_matching_title_and_messages_give_one_row_each(user, conversations):
    say(conversations["soup"], "More leeks.", "Leeks again.")
    assert search(user, "leek") == [conversations["soup"]]
    assert matching(Conversation.objects.filter(owner=user), "leek").count() == 1


@pytest.mark.django_db
def test_matching_never_finds_another_users_conversations(user, other_user, conversations):
    for text in ("soup", "lisbon", "leeks", "market", "off_tickets"):
        assert conversations["theirs"] not in search(user, text)
    assert search(other_user, "market") == [conversations["theirs"]]


@pytest.mark.django_db
def test_matching_missing_word_finds_nothing(user, conversations):
    assert search(user, "quokka") == []


@pytest.mark.django_db
def test_matching_wildcards_are_literal(user, conversations):
    assert search(user, "50% off_") == [conversations["trip"]]
    assert search(user, "5_%") == []


@pytest.mark.django_db
def test_matching_keeps_the_querysets_filters_and_order(user, conversations):
    recent = Conversation.objects.filter(
        owner=user, updated_at__gt=timezone.now() - timedelta(minutes=90)
    ).order_by("updated_at")
    assert list(matching(recent, "soup")) == [conversations["trip"]]

    oldest_first = Conversation.objects.filter(owner=user).order_by("updated_at")
    found = matching(oldest_first, "soup")
    assert list(found) == [conversations["soup"], conversations["trip"]]
    # Still a plain queryset: it filters further.
    assert list(found.filter(title="Lisbon")) == [conversations["trip"]]


# --- PostgreSQL's indexes ----------------------------------------------------------------


@postgres_only
@pytest.mark.django_db
def test_search_indexes_exist_after_migrate():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, tablename, indexdef FROM pg_indexes WHERE indexname = ANY(%s)",
            [list(SEARCH_INDEXES)],
        )
        found = {name: (table, definition) for name, table, definition in cursor.fetchall()}
    assert set(found) == set(SEARCH_INDEXES)
    for name, (table, definition) in found.items():
        assert table == SEARCH_INDEXES[name]
        assert "USING gin" in definition
        assert "upper(" in definition
        assert "gin_trgm_ops" in definition


def plan_without_other_ways(queryset: QuerySet[Any]) -> str:
    """The plan with table scans, index scans and nested loops priced out: on tables this
    small the planner would not choose a trigram index, but it must still be able to."""
    with connection.cursor() as cursor:
        for setting in ("enable_seqscan", "enable_indexscan", "enable_nestloop"):
            cursor.execute(f"SET LOCAL {setting} = off")  # until the test's rollback
    return queryset.explain()


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "lookup", "index"),
    [
        (Message, "content__icontains", "message_content_trgm"),
        (Conversation, "title__icontains", "conversation_title_trgm"),
    ],
)
def test_icontains_can_use_the_trigram_index(conversations, model, lookup, index):
    """The index matches Django's `icontains` SQL, `UPPER(col::text) LIKE UPPER(...)`."""
    plan = plan_without_other_ways(model.objects.filter(**{lookup: "lisbon"}))
    assert f"Bitmap Index Scan on {index}" in plan


@postgres_only
@pytest.mark.django_db
def test_matching_can_use_the_message_index(user, conversations):
    mine = Conversation.objects.filter(owner=user).order_by("-updated_at", "-pk")
    plan = plan_without_other_ways(matching(mine, "zeppelin")[:21])
    assert "Bitmap Index Scan on message_content_trgm" in plan


@postgres_only
def test_bench_search_runs_on_a_tiny_history():
    """`python -m bench.search` still runs against today's code (its timings unchecked)."""
    argv = ["--messages", "300", "--conversations", "12", "--users", "2", "--repeat", "1"]
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [
            sys.executable,
            "-m",
            "bench.search",
            "--database-url",
            os.environ["DATABASE_URL"],
            *argv,
        ],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| rare `zeppelin` |" in done.stdout
    assert "plan, rare, trigram index:" in done.stdout
