"""What each user may still start: replies per minute, replies running at once, tokens per
day, conversations per minute.

Counted inside the transaction that stores what is started, with the users' rows locked
first (`SELECT ... FOR UPDATE`, always in one order), so that processes serving the same
user at the same time take turns and no limit is overrun. Tokens are counted while a
reply streams: it reserves its prompt and the most it may write when it starts, and its
final write settles the record to what it used; a reply never asks for more than the
day's quota has left.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Min, Sum
from django.utils import timezone

from chat.models import Conversation, Message, UsageRecord
from chat.refusals import Refused

# Fewer tokens than this left today: a reply could not say anything useful.
SMALLEST_REPLY = 16


@dataclass(frozen=True)
class Allowance:
    """What a reply may use: tokens reserved for it, and the `max_tokens` it asks for
    (None: the server's default)."""

    reserved_tokens: int
    max_tokens: int | None


def lock_users(user_ids: Iterable[int]) -> None:
    """Lock the users' rows until the transaction ends (a no-op on SQLite, whose writing
    transactions take turns anyway)."""
    users = get_user_model().objects.select_for_update().filter(pk__in=set(user_ids))
    list(users.order_by("pk").values_list("pk", flat=True))


class ReplyLimits:
    """The reply limits of a set of users, read with one query per limit however many
    users; `take` counts each reply started after it."""

    def __init__(self, user_ids: set[int]) -> None:
        lock_users(user_ids)
        self.now = now = timezone.now()
        records = UsageRecord.objects.filter(owner_id__in=user_ids).values_list("owner_id")
        recent = records.filter(created_at__gte=now - timedelta(minutes=1))
        self.started: dict[int, tuple[int, datetime]] = {
            owner_id: (count, oldest)
            for owner_id, count, oldest in recent.annotate(Count("id"), Min("created_at"))
        }
        running = Message.objects.filter(
            status=Message.Status.STREAMING, conversation__owner_id__in=user_ids
        ).values_list("conversation__owner_id")
        self.running: dict[int, int] = dict(running.annotate(Count("id")))
        self.used: dict[int, int] = {}
        if settings.CHAT_TOKENS_PER_DAY:
            today = records.filter(created_at__gte=_midnight(now))
            self.used = {owner: total or 0 for owner, total in today.annotate(Sum("total_tokens"))}

    def take(self, user_id: int, prompt_tokens: int) -> Allowance:
        """Count one more reply for the user, or refuse it, saying when to try again."""
        started, oldest = self.started.get(user_id, (0, self.now))
        if started >= settings.CHAT_MESSAGES_PER_MINUTE:
            wait = max(1, 60 - int((self.now - oldest).total_seconds()))
            raise Refused(
                "rate_limited",
                f"You are sending messages too fast; try again in {wait} seconds.",
                retry_after=wait,
            )
        if self.running.get(user_id, 0) >= settings.CHAT_REPLIES_RUNNING_PER_USER:
            raise Refused(
                "rate_limited",
                "You have as many replies running as you may; send again when one ends.",
            )
        allowance = self._tokens(user_id, prompt_tokens)
        self.started[user_id] = (started + 1, oldest)
        self.running[user_id] = self.running.get(user_id, 0) + 1
        self.used[user_id] = self.used.get(user_id, 0) + allowance.reserved_tokens
        return allowance

    def _tokens(self, user_id: int, prompt_tokens: int) -> Allowance:
        longest = settings.CHAT_MAX_REPLY_TOKENS or None
        quota = settings.CHAT_TOKENS_PER_DAY
        if not quota:
            return Allowance(prompt_tokens + (longest or 0), longest)
        left = quota - self.used.get(user_id, 0) - prompt_tokens
        if left < SMALLEST_REPLY:
            tomorrow = _midnight(self.now) + timedelta(days=1)
            raise Refused(
                "quota_exceeded",
                "You have used today's tokens; the quota renews at midnight UTC.",
                retry_after=max(1, int((tomorrow - self.now).total_seconds())),
            )
        max_tokens = min(longest, left) if longest else left
        return Allowance(prompt_tokens + max_tokens, max_tokens)


def take_conversations(user_ids: list[int]) -> list[Refused | None]:
    """For each new conversation (by its owner, in order): None if it may be made, else
    the refusal. Counts conversations made in the last minute, the users' rows locked."""
    lock_users(user_ids)
    now = timezone.now()
    recent = (
        Conversation.objects.filter(
            owner_id__in=set(user_ids), created_at__gte=now - timedelta(minutes=1)
        )
        .values_list("owner_id")
        .annotate(Count("id"), Min("created_at"))
    )
    made = {owner: (count, oldest) for owner, count, oldest in recent}
    answers: list[Refused | None] = []
    for user_id in user_ids:
        count, oldest = made.get(user_id, (0, now))
        if count >= settings.CHAT_CONVERSATIONS_PER_MINUTE:
            wait = max(1, 60 - int((now - oldest).total_seconds()))
            answers.append(
                Refused(
                    "rate_limited",
                    f"You are starting conversations too fast; try again in {wait} seconds.",
                    retry_after=wait,
                )
            )
        else:
            made[user_id] = (count + 1, oldest)
            answers.append(None)
    return answers


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)
