"""Searching conversations by title and message text: the API's `?q=`.

On PostgreSQL both lookups can use the trigram indexes on `UPPER(title)` and
`UPPER(content)` of migration 0004, which is what Django's `icontains` compares there.
"""

from __future__ import annotations

from django.db.models import Exists, OuterRef, QuerySet

from chat.models import Conversation, Message
from chat.text import storable


def matching(conversations: QuerySet[Conversation], text: str) -> QuerySet[Conversation]:
    """Those of `conversations` whose title or any message contains `text`, ignoring case.

    The result is `conversations` filtered, with its order and everything else it had.
    """
    # Not `Q(title) | Exists(mentions)`: behind an OR, PostgreSQL cannot join the EXISTS,
    # so it hashes every matching message of every user (slow for a common word) or
    # reads every message of the user (slow for a rare one). As two subqueries each side
    # gets its own plan: the trigram index for a rare word; for a common one, a probe per
    # conversation that stops at its first mention.
    # As stored: NUL, which PostgreSQL refuses even in a query, was stored as U+FFFD.
    text = storable(text)
    candidates = conversations.order_by().values("pk")
    mentions = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=text)
    titled = candidates.filter(title__icontains=text)
    mentioned = candidates.filter(Exists(mentions))
    return conversations.filter(pk__in=titled.union(mentioned, all=True))
