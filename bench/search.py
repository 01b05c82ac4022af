"""How fast `?q=` searches a large history on PostgreSQL, with and without the trigram
indexes of migration 0004: a scratch database of its own (made and dropped here), filled with
generated conversations; one user's first page of results (`chat.search.matching`, as the
API asks for it) for a rare word, a common word and a missing one.

    .venv/bin/python -m bench.search [--database-url postgres://...] [--messages 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import django
import psycopg

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.contrib.auth.models import User
    from django.db.models import QuerySet

    from chat.models import Conversation

    Search = Callable[[QuerySet[Conversation], str], QuerySet[Conversation]]

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/test"
# The words searched for: planted in about one message in 1,000; in about one in three;
# never generated.
RARE, COMMON, MISSING = "zeppelin", "time", "quokka"
WORDS = {"rare": RARE, "common": COMMON, "missing": MISSING}
SEARCH_INDEXES = ("message_content_trgm", "conversation_title_trgm")
# The API's first page and the one row past it that says whether there is a next page.
PAGE = 21

# --- Generated text --------------------------------------------------------------------------

FILLER = (
    "the a to and of you it is in for that can with this your I on be or if not are what how "
    "would should about also some more one use make like need want then just here there so "
    "but it's do does was have has will my me we they them when which into than only any "
    "each other because first could after before over even most well still way"
)
TOPICS = {
    "cooking": "sourdough starter flour oven recipe soup lentils garlic onion simmer knead "
    "dough crust yeast butter salt pan roast broth spices cumin rice noodles tofu sauce "
    "minutes temperature",
    "programming": "python function database query index django async loop error traceback "
    "variable test deploy docker container request response cache thread memory list "
    "string class module import",
    "travel": "train ticket hotel lisbon kyoto itinerary museum flight luggage passport "
    "station booking airport visa ferry hostel beach mountains day trip",
    "health": "sleep running stretch protein knee routine workout weight calories walking "
    "breakfast water doctor injury rest recovery",
    "writing": "essay paragraph draft tone letter introduction conclusion argument editor "
    "sentence chapter story character plot outline",
    "money": "budget savings mortgage invoice tax rent pension account interest loan "
    "spending income receipt bank",
    "garden": "tomato compost soil seedlings prune roses watering basil seeds greenhouse "
    "mulch weeds harvest pots sunlight",
}
TITLES = (
    "Help with {}",
    "Question about {}",
    "{} ideas",
    "Fixing my {}",
    "{} and {}",
    "Plan for {}",
    "Notes on {}",
)


class TextMaker:
    """Sentences from everyday filler and a conversation's topic words (Zipf-weighted), with
    numbers, identifiers and the odd rare word, so that trigrams vary as they do in chats."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.filler = FILLER.split()
        self.filler_weights = [1 / (rank + 1) for rank in range(len(self.filler))]

    def words(self, topic: str, count: int) -> list[str]:
        topic_words = TOPICS[topic].split()
        picked = []
        for roll in self.rng.choices(range(100), k=count):
            if roll < 59:
                picked.append(self.rng.choices(self.filler, self.filler_weights)[0])
            elif roll < 60:
                picked.append(COMMON)
            elif roll < 92:
                picked.append(self.rng.choice(topic_words))
            elif roll < 96:
                picked.append(str(self.rng.randint(1, 2500)))
            else:
                picked.append(self.identifier())
        return picked

    def identifier(self) -> str:
        letters = "abcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(self.rng.choices(letters, k=self.rng.randint(5, 10)))

    def sentence(self, topic: str) -> str:
        words = self.words(topic, self.rng.randint(5, 18))
        if self.rng.random() < 1 / 4000:
            words.insert(self.rng.randrange(len(words)), RARE)
        end = "?" if self.rng.random() < 0.2 else "."
        return " ".join(words).capitalize() + end

    def message(self, topic: str, role: str) -> str:
        sentences = self.rng.randint(1, 3) if role == "user" else self.rng.randint(2, 8)
        return " ".join(self.sentence(topic) for _ in range(sentences))

    def title(self, topic: str) -> str:
        template = self.rng.choice(TITLES)
        topic_words = TOPICS[topic].split()
        return template.format(*self.rng.sample(topic_words, 2)).capitalize()


# --- The scratch database --------------------------------------------------------------------


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new, empty database beside `admin_url`'s, dropped afterwards: its URL."""
    name = f"bench_search_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        if django.apps.apps.ready:
            from django.db import connections

            for connection in connections.all():
                connection.close()
                if close_pool := getattr(connection, "close_pool", None):
                    close_pool()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrated_project(url: str) -> None:
    os.environ.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_SECRET_KEY="bench-only",  # noqa: S106
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fill(messages: int, conversations: int, users: int, seed: int) -> list[User]:
    """`users` users sharing `conversations` conversations and `messages` messages (some
    conversations long, most short), over the past year."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.db import transaction

    from chat.models import Conversation, Message

    rng = random.Random(seed)  # noqa: S311 (made-up text, the same on every run)
    text = TextMaker(rng)
    owners = [User(username=f"searcher-{i}", password=make_password(None)) for i in range(users)]
    # Lengths from a skewed distribution, scaled to add up to `messages`.
    weights = [rng.paretovariate(1.5) for _ in range(conversations)]
    scale = messages / sum(weights)
    lengths = [max(1, round(w * scale)) for w in weights]
    lengths[-1] += messages - sum(lengths)
    while lengths[-1] < 1:  # rounding overshot: take the excess back from the longest
        longest = lengths.index(max(lengths))
        lengths[longest] -= 1
        lengths[-1] += 1
    now = datetime.now().astimezone()
    with transaction.atomic():
        User.objects.bulk_create(owners)
        owners = list(User.objects.filter(username__startswith="searcher-").order_by("pk"))
        for index, length in enumerate(lengths):
            topic = rng.choice(list(TOPICS))
            started = now - timedelta(days=rng.uniform(0, 365))
            times = [started + timedelta(minutes=2 * i) for i in range(length)]
            conversation = Conversation(
                owner=owners[index % users],
                title=text.title(topic),
                model="bench-model",
                created_at=started,
                updated_at=times[-1],
            )
            conversation.save(force_insert=True)
            roles = [Message.Role.USER, Message.Role.ASSISTANT]
            Message.objects.bulk_create(
                Message(
                    conversation=conversation,
                    role=roles[i % 2],
                    content=text.message(topic, roles[i % 2]),
                    created_at=at,
                    updated_at=at,
                )
                for i, at in enumerate(times)
            )
    return owners


# --- Measuring -------------------------------------------------------------------------------


def median_ms(user: User, word: str, repeat: int, search: Search | None = None) -> float:
    """The median time of the API's first page of `word`'s results for `user`."""
    timings = []
    for _ in range(repeat + 1):
        started = time.perf_counter()
        list(page_of(user, word, search))
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[1:]) * 1000  # the first run warms the cache


def page_of(user: User, word: str, search: Search | None = None) -> QuerySet[Conversation]:
    from chat.models import Conversation
    from chat.search import matching

    conversations = Conversation.objects.filter(owner=user).order_by("-updated_at", "-pk")
    return (search or matching)(conversations, word)[:PAGE]


def matching_with_or(conversations: QuerySet[Conversation], text: str) -> QuerySet[Conversation]:
    """The search as one OR, as it was before `chat.search`: for comparison."""
    from django.db.models import Exists, OuterRef, Q

    from chat.models import Message

    mentions = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=text)
    return conversations.filter(Q(title__icontains=text) | Exists(mentions))


def plan_nodes(user: User, word: str) -> str:
    """The plan's scans of the messages and of the trigram indexes, in plan order."""
    plan = page_of(user, word).explain()
    nodes = []
    for line in plan.splitlines():
        node = line.strip().removeprefix("->").strip().split("  (")[0]
        if "Scan" in node and ("chat_message" in node or "_trgm" in node):
            nodes.append(node)
    return "; ".join(nodes)


def drop_search_indexes() -> list[str]:
    """Drops the search indexes: the statements that build them again."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY(%s)",
            [list(SEARCH_INDEXES)],
        )
        found = dict(cursor.fetchall())
        assert set(found) == set(SEARCH_INDEXES), f"migrate made {sorted(found)}"
        for name in found:
            cursor.execute(f"DROP INDEX {name}")
    return list(found.values())


def index_megabytes(name: str) -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s::regclass)", [name])
        (size,) = cursor.fetchone()
    return float(size) / 2**20


def run_sql(*statements: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def measure(user: User, repeat: int, search: Search | None = None) -> dict[str, float]:
    return {word: median_ms(user, word, repeat, search) for word in WORDS.values()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database-url", default=DEFAULT_URL, help="where to make a scratch db")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per search")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with scratch_database(args.database_url) as url:
        migrated_project(url)
        # Filled without the indexes, as a table that predates them; then built, once.
        create_statements = drop_search_indexes()
        started = time.perf_counter()
        user = fill(args.messages, args.conversations, args.users, args.seed)[0]
        filled = time.perf_counter() - started
        run_sql("VACUUM ANALYZE chat_message", "VACUUM ANALYZE chat_conversation")
        without = measure(user, args.repeat)
        plans_without = {word: plan_nodes(user, word) for word in WORDS.values()}
        started = time.perf_counter()
        run_sql(*create_statements, "ANALYZE chat_message", "ANALYZE chat_conversation")
        built = time.perf_counter() - started
        with_index = measure(user, args.repeat)
        with_or = measure(user, args.repeat, matching_with_or)
        plans_with = {word: plan_nodes(user, word) for word in WORDS.values()}

        from chat.models import Conversation
        from chat.search import matching

        theirs = Conversation.objects.filter(owner=user)
        sizes = " + ".join(f"{index_megabytes(name):.1f}" for name in SEARCH_INDEXES)
        print(
            f"{args.messages:,} messages in {args.conversations:,} conversations of "
            f"{args.users} users, generated in {filled:.1f} s; trigram indexes built in "
            f"{built:.1f} s ({sizes} MB).\nOne user's {theirs.count():,} conversations "
            f"searched, first page ({PAGE} rows), median of {args.repeat} runs:\n"
        )
        print("| search | their matches | no index (ms) | trigram index (ms) | as one OR (ms) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for kind, word in WORDS.items():
            matches = matching(theirs, word).count()
            print(
                f"| {kind} `{word}` | {matches:,} | {without[word]:.1f} | "
                f"{with_index[word]:.1f} | {with_or[word]:.1f} |"
            )
        print()
        for kind, word in WORDS.items():
            print(f"plan, {kind}, no index:      {plans_without[word]}")
            print(f"plan, {kind}, trigram index: {plans_with[word]}")


if __name__ == "__main__":
    main()
