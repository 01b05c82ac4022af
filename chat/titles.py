"""Titles the model writes for conversations, after their first reply, in the background.

A send to an untitled conversation names it at once after the first line of its message
(`chat.persistence`). Once the reply to it is complete, the model is asked for a short
title in its place, in a task of its own that starts after the reply's `done` went out
and so never delays it. The title is stored only while the conversation still has the
provisional one (a rename meanwhile wins), and every tab of the conversation, on every
process, gets the `conversation` frame a rename sends. A model that fails, is slow or
cannot be reached only leaves the first line as the title.
"""

from __future__ import annotations

import asyncio
import logging
import re
from uuid import UUID

from django.conf import settings

from chat import llm, persistence
from chat.models import Conversation
from chat.persistence import ReplyPlan
from chat.replies import Reply
from chat.serializers import conversation_json
from chat.text import storable
from chat.watchers import Watchers

logger = logging.getLogger(__name__)

INSTRUCTION = (
    "Write a title for the conversation below: three to six words that say what it is "
    "about, in the language of the conversation. Answer with the title alone, without "
    "quotes or a final period."
)
# What the model is shown of each side of the exchange, and the most it may write.
EXCERPT_CHARS = 1000
MAX_TOKENS = 24
TITLE_MAX_LENGTH: int = Conversation._meta.get_field("title").max_length or 200

_MARKUP = re.compile(r"^(?:#+\s*|[*_`]+|title\s*:\s*)+", re.IGNORECASE)
_EMPHASIS = re.compile(r"\*\*|__|`")
_QUOTES = "\"'`*_\u201c\u201d\u2018\u2019\u00ab\u00bb\u300c\u300d"


class Titles:
    """The title requests of one event loop: started after first replies, cancelled on
    shutdown."""

    def __init__(self, upstream: llm.Upstream, watchers: Watchers) -> None:
        self.upstream = upstream
        self.watchers = watchers
        self._tasks: set[asyncio.Task[None]] = set()

    def after(self, reply: Reply, plan: ReplyPlan) -> None:
        """Title the conversation once `reply` is complete, if `plan`'s send gave it its
        provisional title."""
        if plan.provisional_title is None or reply.task is None:
            return
        if not settings.CHAT_GENERATE_TITLES:
            return
        reply.task.add_done_callback(lambda _: self._start(reply, plan))

    def _start(self, reply: Reply, plan: ReplyPlan) -> None:
        """The reply has ended and sent its `done`: ask for the title if it is complete."""
        if reply.done is None or reply.done["status"] != "complete":
            return
        assert plan.user_message is not None and plan.provisional_title is not None
        conversation = plan.conversation
        prompt = title_prompt(plan.user_message.content, reply.done["content"])
        task = asyncio.create_task(
            self._title(conversation, plan.provisional_title, prompt),
            name=f"title-{conversation.pk}",
        )
        self._tasks.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)

    async def _title(
        self, conversation: Conversation, provisional: str, prompt: list[dict[str, str]]
    ) -> None:
        conversation_id: UUID = conversation.pk
        try:
            answer = await llm.complete(
                self.upstream,
                conversation.model,
                prompt,
                max_tokens=MAX_TOKENS,
                user=conversation.owner_id,
            )
            title = cleaned(answer)
            if not title:
                logger.info("no title for %s: the model answered %r", conversation_id, answer)
                return
            retitled = await persistence.retitle(
                conversation.owner_id, conversation_id, provisional, title
            )
            if retitled is None:
                return  # renamed or deleted meanwhile
            await self.watchers.broadcast(
                conversation_id,
                {"type": "conversation", "conversation": conversation_json(retitled)},
            )
        except llm.LLMError as exc:
            logger.info("no title for %s: %s", conversation_id, exc)
        except Exception:
            logger.warning("no title for %s", conversation_id, exc_info=True)

    async def close(self) -> None:
        """Cancel the title requests under way and wait until they have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def title_prompt(question: str, answer: str) -> list[dict[str, str]]:
    """The messages that ask for a title: the instruction, then the start of the first
    question and of its reply."""
    excerpt = f"User: {question[:EXCERPT_CHARS]}\n\nAssistant: {answer[:EXCERPT_CHARS]}"
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": excerpt}]


def cleaned(answer: str) -> str:
    """The model's answer as a title: its first line that says something, without
    Markdown, surrounding quotes or a final period, at most the title's length."""
    for line in storable(answer).splitlines():
        title = _EMPHASIS.sub("", _MARKUP.sub("", line.strip())).strip(_QUOTES + " \t")
        title = " ".join(title.rstrip(".:;, \t").strip(_QUOTES + " \t").split())
        if title:
            return _shortened(title)
    return ""


def _shortened(title: str) -> str:
    if len(title) <= TITLE_MAX_LENGTH:
        return title
    cut = title[: TITLE_MAX_LENGTH - 1].rsplit(" ", 1)[0] or title[: TITLE_MAX_LENGTH - 1]
    return cut.rstrip() + "\u2026"
